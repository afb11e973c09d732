package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/promoted/promoted/job"
)

// parseEnd parses the flags cancel and cleanup share, plus the command's
// own (extra), and makes the logger.
func parseEnd(name string, args []string, extra func(*flagGroups, *job.EndConfig)) (*job.EndConfig, *slog.Logger, error) {
	g := newFlagGroups()
	var c common
	cfg := &job.EndConfig{}
	g.Connections.StringVar(&cfg.SourceDSN, "source", "", "source database connection string")
	g.Move.StringVar(&cfg.Tenant, "tenant", "", "the tenant of the move")
	g.Move.StringVar(&cfg.Schema, "schema", "public", "source schema of the move")
	g.Move.StringVar(&cfg.TargetSchema, "target-schema", "", "target schema of the move (default: the move's, as recorded; a different one is refused)")
	g.Move.StringVar(&cfg.TenantColumn, "tenant-column", "", "column that holds the tenant (default: the move's, as recorded; a different one is refused)")
	g.Move.StringSliceVar(&cfg.Tables, "tables", nil, "the move's tables (default: the move's, as recorded; different ones are refused)")
	extra(g, cfg)
	g.Connections.StringVar(&cfg.CatalogDSN, "catalog", "", "catalog database connection string (default: the source; the pooled target after a demotion)")
	c.bindLog(g.Observability)
	fs := g.flagSet(name)
	if err := parse(fs, args); err != nil {
		return nil, nil, err
	}
	if err := required(fs, "source", "tenant"); err != nil {
		return nil, nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, usageOf(err)
	}
	log, err := c.logger(os.Stderr)
	if err != nil {
		return nil, nil, err
	}
	return cfg, log.With("tenant", cfg.Tenant), nil
}

// cancel ends a move before its flip: fence disarmed and removed, slot and
// publication dropped; the target is left for inspection unless
// --drop-target.
func cancel(ctx context.Context, args []string) error {
	cfg, log, err := parseEnd("cancel", args, func(g *flagGroups, cfg *job.EndConfig) {
		g.Connections.StringVar(&cfg.TargetDSN, "target", "", "target database connection string (needed with --drop-target, to cancel a demotion: its demoted rows are deleted from the pooled tables, and to choose among moves of the tenant under way at once: a replica's kafka://... too)")
		g.Move.BoolVar(&cfg.DropTarget, "drop-target", false, "drop what the move created on the target (tables it did not create keep everything but the tenant's rows)")
	})
	if err != nil {
		return err
	}
	id, err := job.Cancel(ctx, *cfg, log)
	if err != nil {
		return err
	}
	log.Info("cancelled: fence, slot and publication removed", "job", id, "target_dropped", cfg.DropTarget)
	fmt.Printf("cancelled move %s of tenant %s\n", id, cfg.Tenant)
	return nil
}
