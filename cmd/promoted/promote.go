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
	m, err := parseMove("promote", args, "target", "target database connection string (the dedicated database, or the source with --target-schema)",
		func(fs *pflag.FlagSet, cfg *job.Config) { cfg.BindCopy(fs); cfg.Cutover.Bind(fs) }, true)
	if err != nil {
		return err
	}
	cfg, c, log := m.cfg, m.common, m.log
	cfg.Promote = true
	j, err := job.New(cfg, log)
	if err != nil {
		return usageOf(err)
	}
	if err := serveMetrics(ctx, c.metricsAddr, log, route{"/verify", verifyHandler(j, c.verifyRemote)}); err != nil {
		return err
	}
	testHooks(j)
	if err := j.Run(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stopped before the cutover: the source stays authoritative; rerun promote to continue")
	}
	printSummary(os.Stdout, cfg.Tenant, j.Summary())
	return nil
}

// printSummary is the report of a promotion.
func printSummary(w io.Writer, tenant string, s *job.Summary) {
	if s == nil {
		return
	}
	if s.AlreadyFlipped {
		fmt.Fprintf(w, "tenant %s was already promoted (catalog version %d); slot and publication dropped\n", tenant, s.Version)
		return
	}
	fmt.Fprintf(w, "tenant %s promoted\n", tenant)
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
		if cs.Verify != nil {
			what := "every row and count"
			if len(cs.Verify.Tables) > 0 && cs.Verify.Tables[0].KeysOnly {
				what = "the rows written since the verification before it"
			}
			fmt.Fprintf(w, "  verified under the fence      %10d rows equal: %s (%d ms)\n", cs.Verify.Rows, what, cs.Verify.Duration.Milliseconds())
		} else {
			fmt.Fprintf(w, "  verified                      skipped (--skip-verify)\n")
		}
		fmt.Fprintf(w, "  lag at fence                  %10d bytes\n", cs.LagAtFence)
		fmt.Fprintf(w, "  writes blocked                %10d ms (fence armed to catalog flipped)\n", cs.Blocked.Milliseconds())
		fmt.Fprintf(w, "  catalog version               %10d\n", cs.Version)
	}
}
