package snapshot

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// Fetcher re-reads single rows of the tenant from the source, for the apply
// of a row that entered the tenant with unchanged TOAST values
// (hazards.md 3.2). Values come back as text under the pinned GUCs, exactly
// as pgoutput would have sent them.
type Fetcher struct {
	dsn  string
	mu   sync.Mutex
	conn *pgx.Conn
}

// NewFetcher connects lazily on first use.
func NewFetcher(sourceDSN string) *Fetcher { return &Fetcher{dsn: sourceDSN} }

// FetchRow implements promoted.RowFetcher.
func (f *Fetcher) FetchRow(ctx context.Context, t *promoted.Table, key promoted.Row) (promoted.Row, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil || f.conn.IsClosed() {
		conn, err := sourceConn(ctx, f.dsn)
		if err != nil {
			return nil, false, err
		}
		f.conn = conn
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
		pgx.Identifier{t.Schema, t.Name}.Sanitize(), TenantPredicate(t), strings.Join(where, " AND "))
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
