package kafka

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// Compare checks folded topics (Fold) against the tenant's rows in the
// source, row by row and column by column, and returns every difference
// as one line (at most max of them; 0: 20). conn must be a session with
// promoted.SessionParams, so the source prints values as the stream sends
// them. A value whose text differs is compared again as a value of the
// column's type, because Debezium's encoding keeps some values but not
// their spelling (a numeric without a type modifier loses its trailing
// zeros). A folded row the source does not hold for the tenant (another
// tenant's, or one deleted) is a difference too.
func Compare(ctx context.Context, conn *pgx.Conn, tables []*promoted.Table, folded State, max int) ([]string, error) {
	if max <= 0 {
		max = 20
	}
	var diffs []string
	add := func(format string, a ...any) {
		if len(diffs) < max {
			diffs = append(diffs, fmt.Sprintf(format, a...))
		}
	}
	for _, t := range tables {
		got := folded[t.String()]
		seen := map[string]bool{}
		rows, err := conn.Query(ctx, "SELECT * FROM "+pgx.Identifier{t.Schema, t.Name}.Sanitize()+" WHERE "+t.TenantPredicate(),
			pgx.QueryResultFormats{pgx.TextFormatCode})
		if err != nil {
			return nil, fmt.Errorf("compare %s: %w", t, err)
		}
		type recheck struct{ key, col, typ, topic, source string }
		var again []recheck
		for rows.Next() {
			vals := rows.RawValues()
			fields := rows.FieldDescriptions()
			pk := make([]string, len(t.PrimaryKey))
			for i, k := range t.PrimaryKey {
				pk[i] = string(vals[t.ColumnIndex(t.Columns[k].Name)])
			}
			key := KeyText(pk)
			seen[key] = true
			row, ok := got[key]
			if !ok {
				add("%s: row %s is missing from the topic", t, key)
				continue
			}
			for i, f := range fields {
				v, ok := row[f.Name]
				switch {
				case !ok:
					add("%s row %s: column %s is missing from the topic", t, key, f.Name)
				case (v == nil) != (vals[i] == nil):
					add("%s row %s column %s: NULL on one side only", t, key, f.Name)
				case v != nil && *v != string(vals[i]):
					c := t.ColumnIndex(f.Name)
					again = append(again, recheck{key, f.Name, t.Columns[c].Type, *v, string(vals[i])})
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("compare %s: %w", t, err)
		}
		for _, r := range again {
			var eq bool
			if err := conn.QueryRow(ctx, "SELECT $1::"+r.typ+" = $2::"+r.typ, r.topic, r.source).Scan(&eq); err != nil || !eq {
				add("%s row %s column %s: topic %q, source %q", t, r.key, r.col, r.topic, r.source)
			}
		}
		for key := range got {
			if !seen[key] {
				add("%s: row %s is in the topic but not the tenant's in the source", t, key)
			}
		}
	}
	return diffs, nil
}
