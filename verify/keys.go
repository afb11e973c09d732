package verify

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// CompareKeys compares only the rows with the given primary keys (each the
// key columns' text values in primary-key order), plus the table's row
// counts. After a full comparison at a consistent point, re-checking the
// rows changed since then proves the table equal at a later point in time
// proportional to the changes, not to the table: that keeps the cutover's
// check under the fence short for a tenant of any size. Rows are looked up
// by the primary key, so the pooled source is read through its index.
func CompareKeys(ctx context.Context, src, dst Querier, t *promoted.Table, keys [][]string, opts Options) (TableResult, error) {
	tr := TableResult{Table: t}
	opts = opts.withDefaults()
	if err := checkSession(ctx, src, "source"); err != nil {
		return tr, err
	}
	if err := checkSession(ctx, dst, "target"); err != nil {
		return tr, err
	}
	q := newKeyQuery(t)
	// The two sides run concurrently unless they share a session.
	both := func(f func(db Querier, table string, source bool) error) error {
		if sameSession(src, dst) {
			if err := f(src, q.src, true); err != nil {
				return fmt.Errorf("on the source: %w", err)
			}
			if err := f(dst, q.dst, false); err != nil {
				return fmt.Errorf("on the target: %w", err)
			}
			return nil
		}
		errc := make(chan error, 1)
		go func() { errc <- f(src, q.src, true) }()
		errDst := f(dst, q.dst, false)
		if err := <-errc; err != nil {
			return fmt.Errorf("on the source: %w", err)
		}
		if errDst != nil {
			return fmt.Errorf("on the target: %w", errDst)
		}
		return nil
	}
	err := both(func(db Querier, table string, source bool) error {
		n, err := q.count(ctx, db, table)
		if source {
			tr.SourceRows = n
		} else {
			tr.TargetRows = n
		}
		return err
	})
	if err != nil {
		return tr, fmt.Errorf("verify %s: count %w", t, err)
	}
	const batch = 5000
	for start := 0; start < len(keys); start += batch {
		part := keys[start:min(start+batch, len(keys))]
		var a, b map[string]string
		err := both(func(db Querier, table string, source bool) error {
			h, err := q.hashes(ctx, db, table, part)
			if source {
				a = h
			} else {
				b = h
			}
			return err
		})
		if err != nil {
			return tr, fmt.Errorf("verify %s: rows %w", t, err)
		}
		ids := make([]string, 0, len(a)+len(b))
		for k := range a {
			ids = append(ids, k)
		}
		for k := range b {
			if _, ok := a[k]; !ok {
				ids = append(ids, k)
			}
		}
		sort.Strings(ids)
		for _, k := range ids {
			ha, inA := a[k]
			hb, inB := b[k]
			var list *[]string
			switch {
			case !inB:
				list = &tr.Missing
			case !inA:
				list = &tr.Extra
			case ha != hb:
				list = &tr.Different
			default:
				continue
			}
			if len(tr.Missing)+len(tr.Extra)+len(tr.Different) >= opts.MaxKeys {
				tr.Truncated = true
				break
			}
			*list = append(*list, k)
		}
	}
	// No table checksum is computed: SourceHash and TargetHash stay empty,
	// and Equal rests on the counts and the listed keys.
	return tr, nil
}

type keyQuery struct {
	src, dst, rowText, keyText, tenant string
	match                              string // (key cols) IN (SELECT ... FROM unnest($1::text[], ...))
	nkeys                              int
}

func newKeyQuery(t *promoted.Table) *keyQuery {
	q := &keyQuery{src: pgx.Identifier{t.Schema, t.Name}.Sanitize(), dst: pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize(), nkeys: len(t.PrimaryKey)}
	var cols []string
	for _, c := range t.Columns {
		if !c.Generated {
			cols = append(cols, c.Name)
		}
	}
	sort.Strings(cols)
	for i, c := range cols {
		cols[i] = "x." + pgx.Identifier{c}.Sanitize()
	}
	q.rowText = "ROW(" + strings.Join(cols, ", ") + ")::text"
	var keyCols, args, sel []string
	for i, k := range t.PrimaryKey {
		c := t.Columns[k]
		col := "x." + pgx.Identifier{c.Name}.Sanitize()
		keyCols = append(keyCols, col)
		args = append(args, fmt.Sprintf("$%d::text[]", i+1))
		u := fmt.Sprintf("u%d", i)
		if c.TypeOID != 0 && c.TypeOID < 16384 {
			sel = append(sel, u+"::"+c.Type)
		} else {
			// A user-defined key type: compare as text (no index, rare).
			keyCols[len(keyCols)-1] = col + "::text"
			sel = append(sel, u)
		}
	}
	names := make([]string, len(t.PrimaryKey))
	for i := range names {
		names[i] = fmt.Sprintf("u%d", i)
	}
	q.keyText = "ROW(" + strings.Join(keyColsPlain(t), ", ") + ")::text"
	q.match = "(" + strings.Join(keyCols, ", ") + ") IN (SELECT " + strings.Join(sel, ", ") + " FROM unnest(" + strings.Join(args, ", ") + ") AS u(" + strings.Join(names, ", ") + "))"
	tc := t.Columns[t.Tenant]
	q.tenant = "x." + pgx.Identifier{tc.Name}.Sanitize() + " = '" + strings.ReplaceAll(t.TenantLiteral, "'", "''") + "'"
	if tc.TypeOID != 0 && tc.TypeOID < 16384 {
		q.tenant += "::" + tc.Type
	}
	return q
}

func keyColsPlain(t *promoted.Table) []string {
	out := make([]string, len(t.PrimaryKey))
	for i, k := range t.PrimaryKey {
		out[i] = "x." + pgx.Identifier{t.Columns[k].Name}.Sanitize()
	}
	return out
}

func (q *keyQuery) count(ctx context.Context, db Querier, table string) (int64, error) {
	var n int64
	err := db.QueryRow(ctx, "SELECT count(*) FROM "+table+" x WHERE "+q.tenant).Scan(&n)
	return n, err
}

func (q *keyQuery) hashes(ctx context.Context, db Querier, table string, keys [][]string) (map[string]string, error) {
	cols := make([][]string, q.nkeys)
	for _, k := range keys {
		for i := range cols {
			cols[i] = append(cols[i], k[i])
		}
	}
	args := make([]any, q.nkeys)
	for i := range cols {
		args[i] = cols[i]
	}
	rows, err := db.Query(ctx, fmt.Sprintf("SELECT %s, md5(%s) FROM %s x WHERE %s AND %s", q.keyText, q.rowText, table, q.tenant, q.match), args...)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	var k, h string
	_, err = pgx.ForEachRow(rows, []any{&k, &h}, func() error { out[k] = h; return nil })
	return out, err
}
