package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

// cancel drops a move's slot and publication; the target is left for
// inspection.
func cancel(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("cancel", pflag.ContinueOnError)
	var c common
	var source, tenant, schema string
	fs.StringVar(&source, "source", "", "source database connection string")
	fs.StringVar(&tenant, "tenant", "", "the tenant whose move to cancel")
	fs.StringVar(&schema, "schema", "public", "source schema of the move")
	c.bind(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "source", "tenant"); err != nil {
		return err
	}
	log, err := c.logger(os.Stderr)
	if err != nil {
		return err
	}
	id, err := job.Cancel(ctx, source, schema, tenant)
	if err != nil {
		return err
	}
	log.Info("cancelled: slot and publication dropped, target left for inspection", "tenant", tenant, "job", id)
	fmt.Printf("cancelled move %s of tenant %s\n", id, tenant)
	return nil
}
