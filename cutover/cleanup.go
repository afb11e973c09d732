package cutover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/state"
)

// DeleteOptions say how DeleteTenantRows paces and places its deletes.
type DeleteOptions struct {
	// Batch is the rows deleted per transaction.
	Batch int
	// Pause is slept between batches, to spare the database.
	Pause time.Duration
	// Target deletes from the tables' target names (clearing a target)
	// instead of their source names.
	Target bool
	// Bypass passes the fence (the source's old rows after a promotion).
	Bypass bool
	// Children maps each table to the tables whose foreign keys reference
	// it; they are emptied first, and VACUUMed before their parents'
	// rows go, so each parent row's foreign-key check finds an index or a
	// small table instead of every dead tuple just left behind
	// (docs/hazards.md 14.6).
	Children map[*promoted.Table][]*promoted.Table
}

// DeleteTenantRows deletes the tenant's rows from the tables in batches,
// each its own short transaction, so no other tenant waits behind one huge
// delete and the WAL and vacuum see small steps. Children go before their
// parents; a table still referenced from outside the move (SQLSTATE 23503)
// is retried after the others. Each batch is logged. It returns the rows
// deleted per table.
func DeleteTenantRows(ctx context.Context, conn *pgx.Conn, tables []*promoted.Table, o DeleteOptions, log *slog.Logger) (map[string]int64, error) {
	if o.Batch <= 0 {
		o.Batch = 5000
	}
	deleted := map[string]int64{}
	pending := childrenFirst(tables, o.Children)
	for len(pending) > 0 {
		var next []*promoted.Table
		progress := false
		for _, t := range pending {
			n, blocked, err := deleteTable(ctx, conn, t, o, deleted, log)
			if err != nil {
				return deleted, err
			}
			progress = progress || n > 0
			if blocked {
				next = append(next, t)
				continue
			}
			if len(parentsOf(t, o.Children)) > 0 && n > 0 {
				start := time.Now()
				if _, err := conn.Exec(ctx, "VACUUM "+relation(t, o.Target)); err != nil {
					return deleted, fmt.Errorf("vacuum %s after deleting the tenant's rows: %w", relation(t, o.Target), err)
				}
				log.Info("vacuumed, so deleting the rows it referenced is fast", "table", relation(t, o.Target), "ms", time.Since(start).Milliseconds())
			}
		}
		if len(next) > 0 && !progress {
			return deleted, fmt.Errorf("rows of %s are still referenced by rows outside the move: delete those first", next[0])
		}
		pending = next
	}
	return deleted, nil
}

func relation(t *promoted.Table, target bool) string {
	if target {
		return pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
	}
	return pgx.Identifier{t.Schema, t.Name}.Sanitize()
}

// deleteTable deletes the tenant's rows of one table, batch by batch. It
// reports blocked when a batch hit a foreign key from outside the move.
func deleteTable(ctx context.Context, conn *pgx.Conn, t *promoted.Table, o DeleteOptions, deleted map[string]int64, log *slog.Logger) (int64, bool, error) {
	name := relation(t, o.Target)
	q := "DELETE FROM " + name + " WHERE ctid = ANY (ARRAY(SELECT ctid FROM " + name + " WHERE " + t.TenantPredicate() + " LIMIT " + fmt.Sprint(o.Batch) + "))"
	var total int64
	start := time.Now()
	for {
		n, err := deleteBatch(ctx, conn, q, o.Bypass)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23503" {
			log.Info("still referenced: deleted after the tables that reference it", "table", name, "detail", pgErr.Detail)
			return total, true, nil
		}
		if err != nil {
			return total, false, fmt.Errorf("delete the tenant's rows of %s: %w", name, err)
		}
		total += n
		deleted[t.String()] += n
		if n > 0 {
			log.Info("deleted a batch of the tenant's rows", "table", name, "rows", n, "total", total,
				"rows_per_second", int64(float64(total)/max(time.Since(start).Seconds(), 1e-3)))
		}
		if n < int64(o.Batch) {
			return total, false, nil
		}
		select {
		case <-ctx.Done():
			return total, false, ctx.Err()
		case <-time.After(o.Pause):
		}
	}
}

func deleteBatch(ctx context.Context, conn *pgx.Conn, q string, bypass bool) (int64, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.Background())
	if bypass {
		if err := state.Bypass(ctx, tx); err != nil {
			return 0, err
		}
	}
	tag, err := tx.Exec(ctx, q)
	if err != nil {
		return 0, err
	}
	if bypass {
		if err := state.Unbypass(ctx, tx); err != nil {
			return 0, err
		}
	}
	return tag.RowsAffected(), tx.Commit(ctx)
}

// childrenFirst orders tables so each comes after every table that
// references it; tables in a cycle keep their order (the 23503 retry
// sorts them out).
func childrenFirst(tables []*promoted.Table, children map[*promoted.Table][]*promoted.Table) []*promoted.Table {
	var out []*promoted.Table
	done := map[*promoted.Table]bool{}
	visiting := map[*promoted.Table]bool{}
	in := map[*promoted.Table]bool{}
	for _, t := range tables {
		in[t] = true
	}
	var visit func(t *promoted.Table)
	visit = func(t *promoted.Table) {
		if done[t] || visiting[t] {
			return
		}
		visiting[t] = true
		for _, c := range children[t] {
			if in[c] {
				visit(c)
			}
		}
		visiting[t] = false
		done[t] = true
		out = append(out, t)
	}
	for _, t := range tables {
		visit(t)
	}
	return out
}

func parentsOf(t *promoted.Table, children map[*promoted.Table][]*promoted.Table) []*promoted.Table {
	var out []*promoted.Table
	for p, cs := range children {
		for _, c := range cs {
			if c == t {
				out = append(out, p)
			}
		}
	}
	return out
}
