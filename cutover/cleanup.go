package cutover

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
)

// DeleteTenantRows deletes the moved tenant's old rows from the source in
// batches of batch rows, each its own short transaction, so no other
// tenant waits behind one huge delete and the WAL and vacuum see small
// steps. Tables referenced by others are retried after their children
// (SQLSTATE 23503). It returns the rows deleted per table.
func DeleteTenantRows(ctx context.Context, src *pgx.Conn, tables []*promoted.Table, batch int, pause time.Duration) (map[string]int64, error) {
	if _, err := src.Exec(ctx, "SET promoted.bypass_fence = on"); err != nil {
		return nil, fmt.Errorf("cleanup: %w", err)
	}
	defer src.Exec(context.Background(), "RESET promoted.bypass_fence")
	deleted := map[string]int64{}
	pending := append([]*promoted.Table(nil), tables...)
	for len(pending) > 0 {
		var next []*promoted.Table
		progress := false
		for _, t := range pending {
			name := pgx.Identifier{t.Schema, t.Name}.Sanitize()
			pred := pgx.Identifier{t.Columns[t.Tenant].Name}.Sanitize() + " = " + promoted.QuoteLiteral(t.TenantLiteral)
			q := fmt.Sprintf("DELETE FROM %s WHERE ctid = ANY (ARRAY(SELECT ctid FROM %s WHERE %s LIMIT %d))", name, name, pred, batch)
			blocked := false
			for {
				tag, err := src.Exec(ctx, q)
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && pgErr.Code == "23503" {
					blocked = true
					break
				}
				if err != nil {
					return deleted, fmt.Errorf("cleanup %s: %w", t, err)
				}
				n := tag.RowsAffected()
				deleted[t.String()] += n
				if n > 0 {
					progress = true
				}
				if n < int64(batch) {
					break
				}
				select {
				case <-ctx.Done():
					return deleted, ctx.Err()
				case <-time.After(pause):
				}
			}
			if blocked {
				next = append(next, t)
			}
		}
		if len(next) > 0 && !progress {
			return deleted, fmt.Errorf("cleanup: rows of %s are still referenced by rows outside the move: delete those first", next[0])
		}
		pending = next
	}
	return deleted, nil
}
