package verify

import (
	"context"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// tableSQL holds the SQL fragments of one table that both sides share: the
// same canonical row text, key row and tenant predicate, so the two sides
// compute the same function of the same values.
type tableSQL struct {
	t        *promoted.Table
	src, dst string // quoted relations
	pred     string
	keyCols  []string // the quoted key columns
	keyList  string   // the key columns as compared: "k1", "k2" COLLATE "C"
	keyRow   string   // ROW(keyList)
	casts    []string // per key column: "::type", or "" to let the server infer it
	rowText  string   // ROW(every stored column, by name)::text
	rowHash  string   // the row's 64-bit hash as numeric
	// collated is set when key columns are compared in byte order, because
	// the two sides' collations order them differently.
	collated bool
}

// newTableSQL builds the table's SQL. collate marks the key columns to
// compare with COLLATE "C"; nil compares every column under its own
// collation, which the primary-key index can serve.
func newTableSQL(t *promoted.Table, collate []bool) *tableSQL {
	ts := &tableSQL{
		t:    t,
		src:  t.SourceRelation(),
		dst:  pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize(),
		pred: t.TenantPredicate(),
	}
	ts.keyCols = make([]string, len(t.PrimaryKey))
	exprs := make([]string, len(t.PrimaryKey))
	ts.casts = make([]string, len(t.PrimaryKey))
	for i, k := range t.PrimaryKey {
		c := t.Columns[k]
		ts.keyCols[i] = ident(c.Name)
		exprs[i] = ts.keyCols[i]
		if i < len(collate) && collate[i] {
			exprs[i] += ` COLLATE "C"`
			ts.collated = true
		}
		// format_type of a user type names the source schema, which may not
		// exist on the target: such keys are left to the server to infer
		// from the comparison with the column.
		if builtin(c) {
			ts.casts[i] = "::" + c.Type
		}
	}
	ts.keyList = strings.Join(exprs, ", ")
	ts.keyRow = "ROW(" + ts.keyList + ")"
	ts.rowText = "ROW(" + strings.Join(canonicalColumns(t), ", ") + ")::text"
	// hashtextextended is PostgreSQL's 64-bit hash of text (the one hash
	// partitioning relies on, so it is stable across platforms and
	// upgrades): as wide as the first 64 bits of an md5 and about twice as
	// cheap per row, which matters under the write fence.
	ts.rowHash = "hashtextextended(" + ts.rowText + ", 0)::numeric"
	return ts
}

// canonicalColumns are the quoted columns of the canonical row text:
// ordered by name, not attnum, because the target's column order may differ
// from the source's; generated columns are left out because the target
// computes them itself (docs/hazards.md 10.2).
func canonicalColumns(t *promoted.Table) []string {
	var names []string
	for _, c := range t.Columns {
		if !c.Generated {
			names = append(names, c.Name)
		}
	}
	sort.Strings(names)
	for i, n := range names {
		names[i] = ident(n)
	}
	return names
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func builtin(c promoted.Column) bool { return c.TypeOID != 0 && c.TypeOID < 16384 }

// keyRange is a half-open range of primary keys, lo < key <= hi, each end
// a key as text per key column; nil is unbounded.
type keyRange struct{ lo, hi []string }

// params collects query parameters: key values travel as text, parsed by
// each side's own input function.
type params []any

func (p *params) add(v any) string {
	*p = append(*p, v)
	return "$" + strconv.Itoa(len(*p))
}

// row is a row constructor of key parameters, cast per key column.
func (p *params) row(ts *tableSQL, key []string) string {
	var b strings.Builder
	b.WriteString("ROW(")
	for i, v := range key {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.add(v))
		b.WriteString(ts.casts[i])
	}
	b.WriteString(")")
	return b.String()
}

// where is the tenant predicate and the key range, compared as row values
// so a composite key range is one index range scan.
func (p *params) where(ts *tableSQL, r keyRange) string {
	w := ts.pred
	if r.lo != nil {
		w += " AND " + ts.keyRow + " > " + p.row(ts, r.lo)
	}
	if r.hi != nil {
		w += " AND " + ts.keyRow + " <= " + p.row(ts, r.hi)
	}
	return w
}

// sumsSQL counts and checksums the range on one side, split into the
// buckets (.., bounds[0]], (bounds[0], bounds[1]], ..., (bounds[n-1], ..),
// so one scan of the range evaluates every sub-range. The result is one
// row: a count and a checksum per bucket. Each row's bucket and hash are
// computed once, in a subquery kept apart by OFFSET 0, and the buckets are
// aggregated with FILTER: grouping by the bucket made the planner sort the
// range instead.
func (ts *tableSQL) sumsSQL(rel string, r keyRange, bounds [][]string) (string, []any) {
	var p params
	where := p.where(ts, r)
	if len(bounds) == 0 {
		return "SELECT count(*), coalesce(sum(" + ts.rowHash + "), 0)::text FROM " + rel + " WHERE " + where, p
	}
	var b strings.Builder
	b.WriteString("SELECT ")
	for i := range len(bounds) + 1 {
		if i > 0 {
			b.WriteString(", ")
		}
		n := strconv.Itoa(i)
		b.WriteString(`count(*) FILTER (WHERE "promoted.b" = ` + n + `), coalesce(sum("promoted.h") FILTER (WHERE "promoted.b" = ` + n + `), 0)::text`)
	}
	b.WriteString(" FROM (SELECT CASE")
	for i, k := range bounds {
		b.WriteString(" WHEN " + ts.keyRow + " <= " + p.row(ts, k) + " THEN " + strconv.Itoa(i))
	}
	b.WriteString(" ELSE " + strconv.Itoa(len(bounds)) + ` END AS "promoted.b", ` + ts.rowHash + ` AS "promoted.h" FROM ` + rel +
		" WHERE " + where + " OFFSET 0) AS s")
	return b.String(), p
}

// boundsSQL lists every step-th key of the range in key order, as text,
// stopping before the n-th: the ends of buckets of step rows each.
func (ts *tableSQL) boundsSQL(rel string, r keyRange, step, n int64) (string, []any) {
	var p params
	where := p.where(ts, r)
	return "SELECT " + ts.keyTexts() + " FROM (SELECT " + strings.Join(ts.keyCols, ", ") +
		`, row_number() OVER (ORDER BY ` + ts.keyList + `) AS "promoted.rn" FROM ` + rel + " WHERE " + where +
		`) AS s WHERE "promoted.rn" % ` + p.add(step) + ` = 0 AND "promoted.rn" < ` + p.add(n) +
		` ORDER BY "promoted.rn"`, p
}

// keyTexts selects each key column as text, as a boundary is passed back.
// The outputs are named apart from every column, so that ORDER BY a key
// column means the column and not the text.
func (ts *tableSQL) keyTexts() string {
	out := make([]string, len(ts.keyCols))
	for i, k := range ts.keyCols {
		out[i] = k + `::text AS "promoted.k` + strconv.Itoa(i) + `"`
	}
	return strings.Join(out, ", ")
}

// orderSQL lists those of the keys that exist on a side, in that side's key
// order: when the order differs from the order they were found in on the
// other side, the two sides do not agree on key ranges.
func (ts *tableSQL) orderSQL(rel string, keys [][]string) (string, []any) {
	var p params
	in := make([]string, len(keys))
	for i, k := range keys {
		in[i] = p.row(ts, k)
	}
	return "SELECT " + ts.keyTexts() + " FROM " + rel + " WHERE " + ts.pred + " AND " + ts.keyRow +
		" IN (" + strings.Join(in, ", ") + ") ORDER BY " + ts.keyList, p
}

// listSQL lists the range's keys with each row's hash, in key order, at
// most limit rows when limit > 0.
func (ts *tableSQL) listSQL(rel string, r keyRange, limit int) (string, []any) {
	var p params
	sql := "SELECT ROW(" + strings.Join(ts.keyCols, ", ") + `)::text AS "promoted.key", md5(` + ts.rowText + `) AS "promoted.hash", ` + ts.keyTexts() + " FROM " + rel +
		" WHERE " + p.where(ts, r) +
		" ORDER BY " + ts.keyList
	if limit > 0 {
		sql += " LIMIT " + p.add(int64(limit))
	}
	return sql, p
}

// sums is a range's count and checksum on one side.
type sums struct {
	n    int64
	hash string
}

// querySums reads the buckets' counts and checksums of a sumsSQL query.
func querySums(ctx context.Context, q Querier, sql string, args []any, buckets int) ([]sums, error) {
	out := make([]sums, buckets)
	dest := make([]any, 0, 2*buckets)
	for i := range out {
		dest = append(dest, &out[i].n, &out[i].hash)
	}
	if err := q.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		return nil, err
	}
	return out, nil
}

func queryBounds(ctx context.Context, q Querier, sql string, args []any) ([][]string, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) ([]string, error) {
		key := make([]string, len(row.FieldDescriptions()))
		ptrs := make([]any, len(key))
		for i := range key {
			ptrs[i] = &key[i]
		}
		return key, row.Scan(ptrs...)
	})
}

// keyHash is one listed row: its key as text, its row hash, and its key
// columns as text.
type keyHash struct {
	key, hash string
	cols      []string
}

func queryList(ctx context.Context, q Querier, sql string, args []any) ([]keyHash, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (keyHash, error) {
		var kh keyHash
		kh.cols = make([]string, len(row.FieldDescriptions())-2)
		ptrs := []any{&kh.key, &kh.hash}
		for i := range kh.cols {
			ptrs = append(ptrs, &kh.cols[i])
		}
		return kh, row.Scan(ptrs...)
	})
}
