package job

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/schema"
)

// DryRun is what a move would do, and every reason it would be refused,
// read without creating anything anywhere (--dry-run).
type DryRun struct {
	Tables []DryRunTable
	// Notes are the plan's remarks: foreign keys to tables that are not
	// moved, and what becomes of them.
	Notes []string
	// FreeSlots and FreeSenders are what the source has left: a move takes
	// one slot and one WAL sender, and --parallel sessions while it copies.
	FreeSlots, FreeSenders int
	// EstimatedCopy is the copy's time at the rate the benchmark measures
	// on two cores (400k rows/s); a rough guide only.
	EstimatedCopy time.Duration
	// WALRate is the source's WAL write rate now (bytes/s, sampled over a
	// second), and RetainedWAL what the slot would hold back by the end
	// of the copy at that rate: the move's whole footprint on the
	// source's disk while it copies. Budget is --max-retained-wal.
	WALRate             float64
	RetainedWAL, Budget int64
	// Refusals lists every check that would stop the move, one line each.
	Refusals []string
}

// DryRunTable is one table of the plan.
type DryRunTable struct {
	Name, Filter   string
	EstimatedRows  int64
	EstimatedBytes int64
}

// copyRowsPerSecond is the benchmark's snapshot copy rate, for estimates.
const copyRowsPerSecond = 400_000

// Planned returns the dry run's result once Run has returned.
func (j *Job) Planned() *DryRun { return j.dry }

// dryRun runs every check the move would run before creating anything,
// collecting each refusal instead of stopping at the first, and describes
// the plan.
func (j *Job) dryRun(ctx context.Context, src, dst *pgx.Conn, plan *schema.Plan, first []string) error {
	d := &DryRun{Notes: plan.Notes, Refusals: first}
	refuse := func(err error) {
		if err != nil {
			d.Refusals = append(d.Refusals, err.Error())
		}
	}
	var rows int64
	for _, t := range plan.Tables {
		filter := "server row filter (the replica identity covers " + j.cfg.TenantColumn + ")"
		switch {
		case t.Whole():
			filter = "whole table (it has no " + j.cfg.TenantColumn + ": every row is the tenant's, and the pooled " + j.cfg.TenantColumn + " gets " + t.TenantLiteral + ")"
		case !t.ServerFilter:
			filter = "filtered by promoted (the replica identity lacks " + j.cfg.TenantColumn + ": every tenant's changes of it are decoded)"
		}
		d.Tables = append(d.Tables, DryRunTable{Name: t.String(), Filter: filter, EstimatedRows: t.EstimatedRows, EstimatedBytes: t.EstimatedBytes})
		rows += t.EstimatedRows
	}
	d.EstimatedCopy = time.Duration(float64(rows) / copyRowsPerSecond * float64(time.Second))
	rate, err := walRate(ctx, src)
	if err != nil {
		return fmt.Errorf("dry run: %w", err)
	}
	d.WALRate, d.Budget = rate, int64(j.cfg.MaxRetainedWAL)
	d.RetainedWAL = int64(rate * d.EstimatedCopy.Seconds())
	if d.Budget > 0 && d.RetainedWAL > d.Budget {
		refuse(fmt.Errorf("at the source's current WAL rate (%s/s) the slot would hold back about %s by the end of the copy, past --max-retained-wal %s, and the move would be stopped: raise the budget, or move the tenant when the source writes less",
			FormatBytes(int64(rate)), FormatBytes(d.RetainedWAL), FormatBytes(d.Budget)))
	}
	if err := src.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
	        current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int`).Scan(&d.FreeSlots, &d.FreeSenders); err != nil {
		return fmt.Errorf("dry run: %w", err)
	}
	if j.cfg.Promote && !j.cfg.Demote && len(plan.ReferencedBy) > 0 {
		refuse(fmt.Errorf("foreign key %s, whose table is not moved: after the promotion its rows would point at rows that cleanup deletes; add that table to --tables", plan.ReferencedBy[0]))
	}
	refuse(checkSlots(ctx, src, j.names.Slot))
	refuse(checkOwnership(ctx, src, plan.Tables))
	refuse(checkStateRights(ctx, src, "source"))
	refuse(checkTargetRole(ctx, dst, j.cfg.TargetSchema))
	if j.cfg.Demote {
		checkPooledEach(ctx, src, dst, plan, false, func(err error) bool {
			refuse(err)
			return true
		})
	} else {
		refuse(checkTarget(ctx, dst, plan.Tables))
	}
	if !j.cfg.AllowEmpty {
		refuse(checkNotEmpty(ctx, src, plan.Tables))
	}
	if l, err := acquireLease(ctx, j.cfg.SourceDSN, j.ID, plan.Tenant()); err != nil {
		refuse(err)
	} else {
		l.release()
	}
	j.dry = d
	if len(d.Refusals) > 0 {
		return &RefusedError{Count: len(d.Refusals)}
	}
	return nil
}

// RefusedError ends a dry run that found reasons to refuse the move (the
// reasons are in Planned().Refusals).
type RefusedError struct{ Count int }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("the move would be refused for %d reason(s), listed above: fix them and run again", e.Count)
}

// walRate samples the source's WAL write rate over one second.
func walRate(ctx context.Context, src *pgx.Conn) (float64, error) {
	var a, b int64
	if err := src.QueryRow(ctx, `SELECT pg_current_wal_lsn() - '0/0'`).Scan(&a); err != nil {
		return 0, fmt.Errorf("read the source's WAL position: %w", err)
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(time.Second):
	}
	if err := src.QueryRow(ctx, `SELECT pg_current_wal_lsn() - '0/0'`).Scan(&b); err != nil {
		return 0, fmt.Errorf("read the source's WAL position: %w", err)
	}
	return float64(b-a) / time.Since(start).Seconds(), nil
}
