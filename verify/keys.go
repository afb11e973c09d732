package verify

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// keysPerQuery bounds the keys looked up by one query.
const keysPerQuery = 5000

// CompareKeys compares only the rows with the given primary keys (each the
// key columns' text values in primary-key order), plus the table's row
// counts. After a full comparison at a consistent point, re-checking the
// rows changed since then proves the table equal at a later point at a cost
// proportional to the changes, not to the table: that keeps the cutover's
// check under the fence short. Rows are looked up through the primary key,
// so the pooled source is read through its index. SourceHash and
// TargetHash stay empty; Equal rests on the counts and the listed keys.
func CompareKeys(ctx context.Context, src, dst Querier, t *promoted.Table, keys [][]string, opts Options) (TableResult, error) {
	if err := checkSessions(ctx, src, dst); err != nil {
		return TableResult{Table: t, KeysOnly: opts.NoCounts}, err
	}
	return compareKeys(ctx, src, dst, t, keys, opts)
}

// CompareKeySets is CompareKeys over several tables at once, as the
// cutover needs it under the fence, where every round trip counts: each
// session's settings are checked once, and a table without keys costs no
// query when counts are not wanted.
func CompareKeySets(ctx context.Context, src, dst Querier, tables []*promoted.Table, keys map[*promoted.Table][][]string, opts Options) (*Result, error) {
	start := time.Now()
	if err := checkSessions(ctx, src, dst); err != nil {
		return nil, err
	}
	if opts.NoCounts {
		if res, ok, err := compareKeysOnce(ctx, src, dst, tables, keys, opts); ok || err != nil {
			if res != nil {
				res.Duration = time.Since(start)
			}
			return res, err
		}
	}
	res := &Result{}
	for _, t := range tables {
		k := DistinctKeys(keys[t])
		if len(k) == 0 && opts.NoCounts {
			res.Tables = append(res.Tables, TableResult{Table: t, KeysOnly: true})
			continue
		}
		tr, err := compareKeys(ctx, src, dst, t, k, opts)
		if err != nil {
			return nil, err
		}
		res.Tables = append(res.Tables, tr)
		res.Rows += int64(len(k))
	}
	res.Duration = time.Since(start)
	return res, nil
}

// checkSessions checks both sessions' settings, at once when they are two
// connections: under the fence a round trip saved is blocked time saved.
func checkSessions(ctx context.Context, src, dst Querier) error {
	c := &comparer{src: src, dst: dst, parallel: !sameSession(src, dst)}
	return c.both(ctx, func(ctx context.Context) error { return checkSession(ctx, src, "source") },
		func(ctx context.Context) error { return checkSession(ctx, dst, "target") })
}

// compareKeysOnce looks every table's keys up in one query per side, the
// tables' lookups joined by UNION ALL: one round trip on each side, run at
// once, instead of one per table, for the check under the fence. It
// declines (ok false) when the keys are too many for one query.
func compareKeysOnce(ctx context.Context, src, dst Querier, tables []*promoted.Table, keys map[*promoted.Table][][]string, opts Options) (*Result, bool, error) {
	res := &Result{Tables: make([]TableResult, len(tables))}
	var (
		srcP, dstP     params
		srcSQL, dstSQL []string
		total          int
	)
	for i, t := range tables {
		res.Tables[i] = TableResult{Table: t, KeysOnly: true}
		k := DistinctKeys(keys[t])
		if len(k) == 0 {
			continue
		}
		total += len(k)
		res.Rows += int64(len(k))
		ts := newTableSQL(t, nil)
		tag := strconv.Itoa(i) + ` AS "promoted.t", `
		srcSQL = append(srcSQL, "SELECT "+tag+ts.keysSelect(&srcP, ts.src, k))
		dstSQL = append(dstSQL, "SELECT "+tag+ts.keysSelect(&dstP, ts.dst, k))
	}
	if total > keysPerQuery {
		return nil, false, nil
	}
	if total == 0 {
		return res, true, nil
	}
	var a, b map[int][]keyHash
	c := &comparer{src: src, dst: dst, parallel: !sameSession(src, dst)}
	err := c.both(ctx, func(ctx context.Context) (err error) {
		a, err = queryTagged(ctx, src, strings.Join(srcSQL, " UNION ALL "), srcP)
		return err
	}, func(ctx context.Context) (err error) {
		b, err = queryTagged(ctx, dst, strings.Join(dstSQL, " UNION ALL "), dstP)
		return err
	})
	if err != nil {
		return nil, true, fmt.Errorf("verify: rows: %w", err)
	}
	o := opts.withDefaults()
	for i := range tables {
		st := newDiff(o.MaxKeys)
		st.add(a[i], b[i])
		tr := &res.Tables[i]
		tr.Missing, tr.Extra, tr.Different, tr.Truncated = st.report()
	}
	return res, true, nil
}

// queryTagged reads a compareKeysOnce query's rows by table.
func queryTagged(ctx context.Context, q Querier, sql string, args []any) (map[int][]keyHash, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	out := map[int][]keyHash{}
	var (
		i  int
		kh keyHash
	)
	_, err = pgx.ForEachRow(rows, []any{&i, &kh.key, &kh.hash}, func() error {
		out[i] = append(out[i], kh)
		return nil
	})
	return out, err
}

func compareKeys(ctx context.Context, src, dst Querier, t *promoted.Table, keys [][]string, opts Options) (TableResult, error) {
	start := time.Now()
	res := TableResult{Table: t, KeysOnly: opts.NoCounts}
	c := &comparer{opts: opts.withDefaults(), src: src, dst: dst, parallel: !sameSession(src, dst)}
	ts := newTableSQL(t, nil)
	// The predicate holds the tenant value: it is concatenated, never a
	// format string (a % in a tenant id is data).
	count := func(rel string) string { return "SELECT count(*) FROM " + rel + " WHERE " + ts.pred }
	if !opts.NoCounts {
		err := c.both(ctx, func(ctx context.Context) error {
			return src.QueryRow(ctx, count(ts.src)).Scan(&res.SourceRows)
		}, func(ctx context.Context) error {
			return dst.QueryRow(ctx, count(ts.dst)).Scan(&res.TargetRows)
		})
		if err != nil {
			return res, fmt.Errorf("verify %s: count: %w", t, err)
		}
	}
	keys = DistinctKeys(keys)
	st := newDiff(c.opts.MaxKeys)
	for from := 0; from < len(keys) && !st.full(); from += keysPerQuery {
		part := keys[from:min(from+keysPerQuery, len(keys))]
		var a, b []keyHash
		err := c.both(ctx, func(ctx context.Context) (err error) {
			sql, args := ts.keysSQL(ts.src, part)
			a, err = queryList(ctx, src, sql, args)
			return err
		}, func(ctx context.Context) (err error) {
			sql, args := ts.keysSQL(ts.dst, part)
			b, err = queryList(ctx, dst, sql, args)
			return err
		})
		if err != nil {
			return res, fmt.Errorf("verify %s: rows: %w", t, err)
		}
		st.add(a, b)
	}
	res.Missing, res.Extra, res.Different, res.Truncated = st.report()
	res.Duration = time.Since(start)
	return res, nil
}

// keysSQL lists the given keys' rows with their hashes, as listSQL lists a
// range: the keys travel as one text array per key column (each key once)
// and are cast to the column's type where it is built in, so the key
// index serves the lookup.
func (ts *tableSQL) keysSQL(rel string, keys [][]string) (string, []any) {
	var p params
	return "SELECT " + ts.keysSelect(&p, rel, keys), p
}

// keysSelect is keysSQL after its SELECT, with its parameters added to p.
func (ts *tableSQL) keysSelect(p *params, rel string, keys [][]string) string {
	sel := make([]string, len(ts.keyCols))
	arrays := make([]string, len(ts.keyCols))
	names := make([]string, len(ts.keyCols))
	for i := range ts.keyCols {
		col := make([]string, len(keys))
		for j, k := range keys {
			col[j] = k[i]
		}
		names[i] = fmt.Sprintf(`"promoted.u%d"`, i)
		arrays[i] = p.add(col) + "::text[]"
		sel[i] = names[i] + ts.casts[i]
	}
	// Each key drives one lookup through the key index (a lateral
	// subquery that OFFSET 0 keeps from being flattened into a join the
	// planner could reorder), whatever the statistics say. A pooled table just filled by a
	// demotion has stale ones, and a semi join planned from them rescanned
	// the key list for every row of the tenant (10 s for 2,000 keys).
	return "ROW(" + strings.Join(ts.keyCols, ", ") + `)::text, md5(` + ts.rowText + `) FROM unnest(` +
		strings.Join(arrays, ", ") + ") AS u(" + strings.Join(names, ", ") + ") CROSS JOIN LATERAL (SELECT * FROM " + rel +
		" WHERE " + ts.pred + " AND " + ts.keyRow + " = ROW(" + strings.Join(sel, ", ") + ") OFFSET 0) AS promoted_x"
}

// DistinctKeys drops repeated keys, keeping the first of each: each key
// drives one lookup, and key lists merged from the source's record and the
// apply's overlap.
func DistinctKeys(keys [][]string) [][]string {
	seen := make(map[string]bool, len(keys))
	out := keys[:0:0]
	for _, k := range keys {
		id := strings.Join(k, "\x00")
		if !seen[id] {
			seen[id] = true
			out = append(out, k)
		}
	}
	return out
}
