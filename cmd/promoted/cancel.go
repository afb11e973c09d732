package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

// endFlags binds the flags cancel and cleanup share.
func endFlags(fs *pflag.FlagSet, c *job.EndConfig) {
	fs.StringVar(&c.SourceDSN, "source", "", "source database connection string")
	fs.StringVar(&c.Tenant, "tenant", "", "the tenant of the move")
	fs.StringVar(&c.Schema, "schema", "public", "source schema of the move")
	fs.StringVar(&c.TargetSchema, "target-schema", "", "target schema of the move (default: same name)")
	fs.StringVar(&c.TenantColumn, "tenant-column", "tenant_id", "column that holds the tenant in pooled tables")
	fs.StringSliceVar(&c.Tables, "tables", nil, "the move's tables (default: every table of --schema with the tenant column)")
	fs.StringVar(&c.CatalogDSN, "catalog", "", "catalog database connection string (default: the source)")
}

// cancel ends a move before its flip: fence disarmed and removed, slot and
// publication dropped; the target is left for inspection unless
// --drop-target.
func cancel(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("cancel", pflag.ContinueOnError)
	var c common
	var cfg job.EndConfig
	endFlags(fs, &cfg)
	fs.StringVar(&cfg.TargetDSN, "target", "", "target database connection string (needed with --drop-target)")
	fs.BoolVar(&cfg.DropTarget, "drop-target", false, "drop the target tables too")
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
	id, err := job.Cancel(ctx, cfg, log.With("tenant", cfg.Tenant))
	if err != nil {
		return err
	}
	log.Info("cancelled: fence, slot and publication removed", "tenant", cfg.Tenant, "job", id, "target_dropped", cfg.DropTarget)
	fmt.Printf("cancelled move %s of tenant %s\n", id, cfg.Tenant)
	return nil
}
