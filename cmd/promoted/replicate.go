package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

// replicate keeps a PostgreSQL schema or database equal to one tenant's
// rows until it is stopped (SIGINT/SIGTERM), then stops cleanly.
func replicate(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("replicate", pflag.ContinueOnError)
	var (
		c    common
		cfg  job.Config
		sink string
	)
	fs.StringVar(&cfg.SourceDSN, "source", "", "source database connection string (passwords from the DSN, PGPASSWORD or ~/.pgpass)")
	fs.StringVar(&cfg.Tenant, "tenant", "", "the tenant's value of the tenant column")
	fs.StringVar(&sink, "sink", "", "where the tenant's rows go: postgres://... (a database; the schema is --target-schema)")
	c.bind(fs)
	cfg.Bind(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "source", "tenant", "sink"); err != nil {
		return err
	}
	if !strings.HasPrefix(sink, "postgres://") && !strings.HasPrefix(sink, "postgresql://") {
		return fmt.Errorf("%w: --sink %q: only postgres://... sinks are supported so far", errUsage, sink)
	}
	cfg.TargetDSN = sink
	log, err := c.logger(os.Stderr)
	if err != nil {
		return err
	}
	if err := serveMetrics(ctx, c.metricsAddr, log); err != nil {
		return err
	}
	j, err := job.New(cfg, log)
	if err != nil {
		return err
	}
	testHooks(j)
	return j.Run(ctx)
}

// testHooks lets the end-to-end tests slow the copy down so they can kill
// the daemon in the middle of it. Not for production use.
func testHooks(j *job.Job) {
	if d, err := time.ParseDuration(os.Getenv("PROMOTED_TEST_CHUNK_DELAY")); err == nil && d > 0 {
		j.Hooks.AfterChunk = func(string) { time.Sleep(d) }
	}
}
