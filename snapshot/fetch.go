package snapshot

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
)

// Fetcher re-reads single rows of the tenant from the source, for the apply
// of a row that entered the tenant with unchanged TOAST values
// (docs/hazards.md 3.2). Values come back as text under the pinned GUCs, exactly
// as pgoutput would have sent them.
type Fetcher struct {
	dsn string
	// Wait bounds how long a fetch waits for the transaction it follows
	// to become visible on the source.
	Wait time.Duration
	mu   sync.Mutex
	conn *pgx.Conn
}

// NewFetcher connects lazily on first use.
func NewFetcher(sourceDSN string) *Fetcher { return &Fetcher{dsn: sourceDSN, Wait: time.Minute} }

// visibleSQL says whether the transaction with 32-bit id $1, which the
// stream has decoded, is visible to a snapshot taken now. The 64-bit id is
// rebuilt from the current epoch: the transaction is older than the
// snapshot's xmax.
const visibleSQL = `WITH s AS (SELECT pg_current_snapshot() AS snap),
     x AS (SELECT snap, pg_snapshot_xmax(snap)::text::bigint AS xmax FROM s),
     c AS (SELECT snap, xmax, ((xmax >> 32) << 32) | $1::bigint AS cand FROM x)
SELECT pg_visible_in_snapshot((CASE WHEN cand >= xmax THEN cand - 4294967296 ELSE cand END)::text::xid8, snap) FROM c`

// waitVisible waits until the source transaction xid is visible. A commit
// is decoded as soon as its record is flushed, but other sessions see it
// only when the committing backend leaves the ProcArray: after the
// synchronous standby has acknowledged it, when there is one
// (docs/hazards.md 14.3). A re-read before that finds the row missing, and
// the row would be dropped.
func (f *Fetcher) waitVisible(ctx context.Context, t *promoted.Table, xid uint32) error {
	deadline := time.Now().Add(f.Wait)
	for {
		var visible bool
		if err := f.conn.QueryRow(ctx, visibleSQL, int64(xid)).Scan(&visible); err != nil {
			return fmt.Errorf("fetch %s: wait for transaction %d: %w", t, xid, err)
		}
		if visible {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fetch %s: source transaction %d was decoded but is still not visible after %s (a synchronous standby that does not answer?); the move stops rather than drop its row: rerun it once the source's commits complete", t, xid, f.Wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// FetchRow implements promoted.RowFetcher: it first waits until the source
// transaction xid, which the row comes from, is visible.
func (f *Fetcher) FetchRow(ctx context.Context, t *promoted.Table, key promoted.Row, xid uint32) (promoted.Row, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil || f.conn.IsClosed() {
		conn, err := db.Open(ctx, db.Source, f.dsn, "promoted-fetch")
		if err != nil {
			return nil, false, err
		}
		f.conn = conn
	}
	if err := f.waitVisible(ctx, t, xid); err != nil {
		return nil, false, err
	}
	var cols []string
	var idx []int
	for i, c := range t.Columns {
		if !c.Generated {
			cols = append(cols, pgx.Identifier{c.Name}.Sanitize())
			idx = append(idx, i)
		}
	}
	var where []string
	params := make([][]byte, 0, len(t.PrimaryKey))
	for i, k := range t.PrimaryKey {
		if key[k].Kind != promoted.Text {
			return nil, false, fmt.Errorf("fetch %s: key column %s has no value", t, t.Columns[k].Name)
		}
		where = append(where, fmt.Sprintf("%s = $%d", pgx.Identifier{t.Columns[k].Name}.Sanitize(), i+1))
		params = append(params, key[k].Data)
	}
	q := fmt.Sprintf("SELECT %s FROM %s WHERE %s AND %s", strings.Join(cols, ", "),
		t.SourceRelation(), t.TenantPredicate(), strings.Join(where, " AND "))
	res := f.conn.PgConn().ExecParams(ctx, q, params, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, false, fmt.Errorf("fetch %s: %w", t, res.Err)
	}
	if len(res.Rows) == 0 {
		return nil, false, nil
	}
	row := make(promoted.Row, len(t.Columns))
	for i := range row {
		row[i].Kind = promoted.Unchanged
	}
	for j, i := range idx {
		v := res.Rows[0][j]
		if v == nil {
			row[i] = promoted.Value{Kind: promoted.Null}
		} else {
			row[i] = promoted.Value{Kind: promoted.Text, Data: append([]byte(nil), v...)}
		}
	}
	return row, true, nil
}

// Close ends the session.
func (f *Fetcher) Close(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil {
		f.conn.Close(ctx)
	}
}
