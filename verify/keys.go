package verify

import (
	"context"
	"fmt"
	"strings"
	"time"

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

func checkSessions(ctx context.Context, src, dst Querier) error {
	if err := checkSession(ctx, src, "source"); err != nil {
		return err
	}
	return checkSession(ctx, dst, "target")
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
	return "SELECT ROW(" + strings.Join(ts.keyCols, ", ") + `)::text, md5(` + ts.rowText + `) FROM unnest(` +
		strings.Join(arrays, ", ") + ") AS u(" + strings.Join(names, ", ") + ") CROSS JOIN LATERAL (SELECT * FROM " + rel +
		" WHERE " + ts.pred + " AND " + ts.keyRow + " = ROW(" + strings.Join(sel, ", ") + ") OFFSET 0) AS promoted_x", p
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
