package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

// promote moves a pooled tenant into a dedicated schema or database while
// it keeps working, and flips its catalog entry.
func promote(ctx context.Context, args []string) error {
	return flipMove(ctx, "promote", args)
}

// demote moves a tenant that lives in a dedicated schema or database back
// into the pooled tables, live, and flips its catalog entry to them.
func demote(ctx context.Context, args []string) error {
	return flipMove(ctx, "demote", args)
}

// rollback undoes a promotion whose cleanup has not run: the tenant's
// writes on the dedicated side since the flip stream back into its
// pooled rows, and the catalog flips back.
func rollback(ctx context.Context, args []string) error {
	var summaryPath string
	m, err := parseMove("rollback", args, moveSpec{targetFlag: "target", targetHelp: "the dedicated database the tenant was promoted into",
		serves: true, recorded: true, extra: func(g *flagGroups, cfg *job.Config) {
			// The catalog flips back to the pooled database: a --location
			// would be ignored.
			bindRouted(g.Cutover, cfg.Cutover.Bind, map[string]*pflag.FlagSet{"location": nil, "catalog": g.Connections})
			bindSummary(g.Observability, &summaryPath)
		}})
	if err != nil {
		return err
	}
	cfg, err := job.PrepareRollback(ctx, m.cfg)
	if err != nil {
		return usageOf(err)
	}
	j, err := job.New(cfg, m.log)
	if err != nil {
		return usageOf(err)
	}
	if err := serveMetrics(ctx, m.metricsAddr, m.log, route{"/verify", verifyHandler(j, m.verifyRemote)}); err != nil {
		return err
	}
	testHooks(j)
	stopProgress := m.showProgress(ctx, j)
	err = j.Run(ctx)
	stopProgress()
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stopped before the cutover: the dedicated side stays authoritative; rerun rollback to continue")
	}
	printSummary(os.Stdout, "rolled back", m.cfg.Tenant, j.Summary())
	return writeSummaryJSON(summaryPath, m.cfg.Tenant, "rolled back", j.Summary())
}

// flipMove runs a move that ends in a catalog flip: a promotion, or a
// demotion (the same phases, from the dedicated side into the pooled
// tables).
func flipMove(ctx context.Context, name string, args []string) error {
	demotion := name == "demote"
	help, side, done := "target database connection string (the dedicated database, or the source with --target-schema)", "source", "promoted"
	if demotion {
		help, side, done = "the pooled database's connection string (its tables must exist; the catalog lives there unless --catalog)", "dedicated side", "demoted"
	}
	var summaryPath string
	m, err := parseMove(name, args, moveSpec{targetFlag: "target", targetHelp: help, serves: true,
		extra: func(g *flagGroups, cfg *job.Config) {
			cfg.BindCopy(g.Copy)
			bindRouted(g.Cutover, cfg.Cutover.Bind, map[string]*pflag.FlagSet{"catalog": g.Connections})
			bindDryRun(g.Move, cfg)
			bindSummary(g.Observability, &summaryPath)
			if demotion {
				g.Connections.Lookup("catalog").Usage = "catalog database connection string (default: the target, the pooled database)"
			} else {
				g.Cutover.BoolVar(&cfg.NoRollback, "no-rollback", false, "keep no rollback slot on the target (the way back is then a full demote)")
			}
		}})
	if err != nil {
		return err
	}
	cfg, c, log := m.cfg, m.common, m.log
	cfg.Promote, cfg.Demote = true, demotion
	j, err := job.New(cfg, log)
	if err != nil {
		return usageOf(err)
	}
	if err := serveMetrics(ctx, c.metricsAddr, log, route{"/verify", verifyHandler(j, c.verifyRemote)}); err != nil {
		return err
	}
	testHooks(j)
	stopProgress := m.showProgress(ctx, j)
	err = j.Run(ctx)
	stopProgress()
	if cfg.DryRun {
		return printDryRun(os.Stdout, cfg.Tenant, j.Planned(), err)
	}
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stopped before the cutover: the %s stays authoritative; rerun %s to continue", side, name)
	}
	printSummary(os.Stdout, done, cfg.Tenant, j.Summary())
	if err := writeSummaryJSON(summaryPath, cfg.Tenant, done, j.Summary()); err != nil {
		return err
	}
	if s := j.Summary(); s != nil && s.Rollback {
		fmt.Printf("  until cleanup, roll back with: promoted rollback --source %s --target %s --tenant %s\n", job.Redact(cfg.SourceDSN), job.Redact(cfg.TargetDSN), cfg.Tenant)
	}
	return nil
}

// printSummary is the report of a promotion or a demotion (what says
// which).
func printSummary(w io.Writer, what, tenant string, s *job.Summary) {
	if s == nil {
		return
	}
	if s.AlreadyFlipped {
		fmt.Fprintf(w, "tenant %s was already %s (catalog version %d); slot and publication dropped\n", tenant, what, s.Version)
		return
	}
	fmt.Fprintf(w, "tenant %s %s\n", tenant, what)
	names := make([]string, 0, len(s.Copied))
	for n := range s.Copied {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  copied %-30s %10d rows\n", n, s.Copied[n])
	}
	fmt.Fprintf(w, "  changes applied               %10d\n", s.Changes)
	if cs := s.Cutover; cs != nil {
		if cs.PreVerify != nil {
			fmt.Fprintf(w, "  verified before the fence     %10d rows, counts and checksums equal (%d ms, %.0f rows/s)\n",
				cs.PreVerify.Rows, cs.PreVerify.Duration.Milliseconds(), float64(cs.PreVerify.Rows)/cs.PreVerify.Duration.Seconds())
		}
		var rows, ms int64
		for _, r := range s.Rounds {
			rows, ms = rows+r.Rows, ms+r.Duration.Milliseconds()
		}
		if len(s.Rounds) > 0 {
			fmt.Fprintf(w, "  re-checked before the fence   %10d rows written meanwhile, equal (%d rounds, %d ms)\n", rows, len(s.Rounds), ms)
		}
		if cs.Verify != nil {
			what := "every row and count"
			if len(cs.Verify.Tables) > 0 && cs.Verify.Tables[0].KeysOnly {
				what = "the rows written since the last check before it"
			}
			fmt.Fprintf(w, "  verified under the fence      %10d rows equal: %s (%d ms)\n", cs.Verify.Rows, what, cs.Verify.Duration.Milliseconds())
		} else {
			fmt.Fprintf(w, "  verified                      skipped (--skip-verify)\n")
		}
		fmt.Fprintf(w, "  lag at fence                  %10d bytes\n", cs.LagAtFence)
		fmt.Fprintf(w, "  writes blocked                %10d ms (fence armed to catalog flipped)\n", cs.Blocked.Milliseconds())
		fmt.Fprintf(w, "  catalog version               %10d\n", cs.Version)
	}
	if s.Spread > 0 {
		fmt.Fprintf(w, "  sequences                     %10d started 2^40 ahead of the pooled ones, so ids taken on both sides never meet\n", s.Spread)
	}
}
