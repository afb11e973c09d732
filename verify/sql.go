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
	rowHash  string   // the row's 64-bit hash (bigint; its sum is exact)
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
	ts.rowHash = rowHash(t)
	return ts
}

// rowHash is the row's 64-bit hash: hash_record_extended of the row's
// columns by name, each as its canonical value, mixed once more. PostgreSQL's extended hash
// functions are the ones hash partitioning relies on, so they are stable
// across platforms and upgrades, and as wide as the first 64 bits of an
// md5. A hash follows its type's equality, which for some types is looser
// than identity (numeric 1.0 = 1.00, float -0 = 0, jsonb, text under a
// nondeterministic collation): only types whose equal values print the
// same are hashed as they are, each cast to its type on both sides so the
// two sides hash the same function; a numeric with its scale; text in
// byte order (COLLATE "C"); every other column as its text, as the row
// text shows it. Skipping the output function of every key, count and timestamp makes
// a checksum about twice as cheap as hashing the row's whole text
// (docs/hazards.md 10.2).
func rowHash(t *promoted.Table) string {
	cols := byName(t)
	fields := make([]string, len(cols))
	for i, c := range cols {
		if name, ok := identical[c.TypeOID]; ok {
			fields[i] = ident(c.Name) + "::" + name
			continue
		}
		switch c.TypeOID {
		case 25, 1043:
			// text, varchar: compared byte for byte.
			fields[i] = ident(c.Name) + `::text COLLATE "C"`
		case 1700:
			// numeric: its value and its display scale (1.0 = 1.00, but
			// the two print differently) say all its text says, without
			// printing it.
			fields[i] = ident(c.Name) + "::numeric, scale(" + ident(c.Name) + ")"
		default:
			fields[i] = "(" + ident(c.Name) + `)::text COLLATE "C"`
		}
	}
	// hash_record_extended combines its fields' hashes linearly (h*31 +
	// field), and the checksum is a sum of rows: alone, two rows swapping
	// a value would leave the sum as it was. Hashing the row's hash again
	// mixes it.
	return "hashint8extended(hash_record_extended(ROW(" + strings.Join(fields, ", ") + "), 0), 0)"
}

// identical names, by OID, the built-in types whose equal values are
// identical, so their own hash functions are exact: cast to the bare type
// (no typmod) so a side whose column is wider hashes its value unrounded.
var identical = map[uint32]string{16: "bool", 17: "bytea", 20: "int8", 21: "int2", 23: "int4", 26: "oid",
	1082: "date", 1114: "timestamp", 1184: "timestamptz", 2950: "uuid"}

// byName is the columns of the canonical row, ordered by name.
func byName(t *promoted.Table) []promoted.Column {
	var cols []promoted.Column
	for _, c := range t.Columns {
		if !c.Generated {
			cols = append(cols, c)
		}
	}
	sort.Slice(cols, func(i, j int) bool { return cols[i].Name < cols[j].Name })
	return cols
}

// canonicalColumns are the quoted columns of the canonical row text:
// ordered by name, not attnum, because the target's column order may differ
// from the source's; generated columns are left out because the target
// computes them itself (docs/hazards.md 10.2).
func canonicalColumns(t *promoted.Table) []string {
	cols := byName(t)
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = ident(c.Name)
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
