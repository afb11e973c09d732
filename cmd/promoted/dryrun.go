package main

import (
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

// bindDryRun adds --dry-run to a command that moves a tenant.
func bindDryRun(fs *pflag.FlagSet, cfg *job.Config) {
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "plan and run every check, print what the move would do and every reason it would be refused, and create nothing anywhere")
}

// printDryRun prints a dry run's plan and refusals; err is Run's error,
// returned unless it is the refusal the list already says.
func printDryRun(w io.Writer, tenant string, d *job.DryRun, err error) error {
	if d == nil {
		return err
	}
	fmt.Fprintf(w, "dry run: the move of tenant %s (nothing was created)\n", tenant)
	var rows, bytes int64
	for _, t := range d.Tables {
		fmt.Fprintf(w, "  table %-28s ~%10d rows ~%8s  %s\n", t.Name, t.EstimatedRows, job.FormatBytes(t.EstimatedBytes), t.Filter)
		rows, bytes = rows+t.EstimatedRows, bytes+t.EstimatedBytes
	}
	fmt.Fprintf(w, "  total                              ~%10d rows ~%8s, a copy of about %s\n", rows, job.FormatBytes(bytes), d.EstimatedCopy.Round(100_000_000))
	for _, n := range d.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	fmt.Fprintf(w, "  WAL: the source writes %s/s now; by the end of the copy the slot would hold back about %s (--max-retained-wal %s)\n",
		job.FormatBytes(int64(d.WALRate)), job.FormatBytes(d.RetainedWAL), job.FormatBytes(d.Budget))
	fmt.Fprintf(w, "  source: %d replication slot(s) and %d WAL sender(s) free; the move takes one of each, and --parallel sessions while it copies\n", d.FreeSlots, d.FreeSenders)
	if len(d.Refusals) == 0 {
		fmt.Fprintln(w, "  every check passed: the move would run")
		return nil
	}
	for _, r := range d.Refusals {
		fmt.Fprintf(w, "  refused: %s\n", r)
	}
	return err
}
