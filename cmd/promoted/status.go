package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/promoted/promoted/job"
)

// errStuck makes status exit 1 when a move needs a person, after printing.
var errStuck = fmt.Errorf("a move failed or stopped with no promoted running it: see its next step")

// status lists every move a source knows of: kind, phase, whether a
// promoted runs it, the slot's lag and retained WAL, the fence, and what to
// run next. It exits 1 when a move is failed or stuck.
func status(ctx context.Context, args []string) error {
	g := newFlagGroups()
	var source string
	var asJSON bool
	g.Connections.StringVar(&source, "source", "", "the source database's connection string (where the moves are recorded)")
	g.Observability.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	fs := g.flagSet("status")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "source"); err != nil {
		return err
	}
	moves, err := job.Status(ctx, source)
	if err != nil {
		return err
	}
	stuck := false
	for _, m := range moves {
		stuck = stuck || m.Stuck
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(moves); err != nil {
			return err
		}
	} else {
		w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "TENANT\tKIND\tPHASE\tROWS COPIED\tRUNNING\tLAG\tRETAINED WAL\tFENCE\tUPDATED\tNEXT")
		for _, m := range moves {
			running, fence := "no", "-"
			if m.Running != "" {
				running = m.Running
			}
			if m.FenceArmed {
				fence = "armed since " + m.FenceSince.Format("15:04:05")
			}
			lag, retained := "-", "-"
			if m.Slot != "" {
				lag, retained = job.FormatBytes(m.LagBytes), job.FormatBytes(m.RetainedWAL)
				if m.LagSeconds != nil {
					lag += fmt.Sprintf(", %.1fs", *m.LagSeconds)
				}
			}
			rows := "-"
			if m.RowsCopied != nil {
				rows = fmt.Sprint(*m.RowsCopied)
				if m.RowsEstimated != nil && *m.RowsEstimated > 0 {
					rows += fmt.Sprintf(" of ~%d", *m.RowsEstimated)
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Tenant, m.Kind, m.Phase, rows, running, lag, retained, fence,
				m.UpdatedAt.Format("2006-01-02 15:04:05"), m.Next)
		}
		w.Flush()
		if len(moves) == 0 {
			fmt.Println("no moves are recorded on this source")
		}
	}
	if stuck {
		return errStuck
	}
	return nil
}
