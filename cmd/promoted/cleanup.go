package main

import (
	"context"
	"fmt"
	"sort"

	"github.com/promoted/promoted/job"
)

// cleanup deletes a promoted tenant's old rows from the pooled tables in
// small batches and removes the fence, slot and publication.
func cleanup(ctx context.Context, args []string) error {
	var summaryPath string
	cfg, log, err := parseEnd("cleanup", args, func(g *flagGroups, cfg *job.EndConfig) {
		g.Connections.StringVar(&cfg.TargetDSN, "target", "", "after a demotion: the pooled database, which holds the catalog")
		g.Move.BoolVar(&cfg.DropSourceTables, "drop-source-tables", false, "after a demotion: drop the dedicated tables the tenant moved out of (they stay, fenced, otherwise)")
		g.Apply.IntVar(&cfg.BatchRows, "batch-rows", 5000, "rows deleted per transaction")
		g.Apply.DurationVar(&cfg.Pause, "batch-pause", 0, "pause between batches, to spare the source")
		g.Observability.StringVar(&summaryPath, "summary-json", "", "also write what was deleted to this file as JSON, for automation")
	})
	if err != nil {
		return err
	}
	deleted, err := job.Cleanup(ctx, *cfg, log)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(deleted))
	for n := range deleted {
		names = append(names, n)
	}
	sort.Strings(names)
	if err := writeSummaryFile(summaryPath, map[string]any{"tenant": cfg.Tenant, "deleted_rows": deleted, "dropped_source_tables": cfg.DropSourceTables}); err != nil {
		return err
	}
	if cfg.DropSourceTables {
		fmt.Printf("tenant %s cleaned up: its dedicated tables dropped\n", cfg.Tenant)
		return nil
	}
	fmt.Printf("tenant %s cleaned up: fence, slot and publication removed\n", cfg.Tenant)
	for _, n := range names {
		fmt.Printf("  deleted %-30s %10d rows\n", n, deleted[n])
	}
	return nil
}
