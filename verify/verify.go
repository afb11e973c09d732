// Package verify proves that the target holds exactly the tenant's rows the
// source holds, without moving the rows to the daemon: each side computes a
// row count and an order-independent 64-bit-per-row checksum in the
// database (docs/hazards.md 10.2). When a table differs, it bisects by
// primary-key ranges until the differing rows are few enough to list, so the
// report names the keys that are missing, extra or different (10.3).
//
// Compare is only meaningful at a consistent point (10.1): under the write
// fence after draining through the marker, or with the source side reading
// an exported snapshot that matches the target's applied position.
package verify

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// Querier is what Compare reads through: a *pgx.Conn, or a pgx.Tx so the
// caller can compare inside a transaction that imported an exported
// snapshot (docs/hazards.md 10.1). Both sessions must run with
// promoted.SessionParams, which Compare checks before reading anything.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Options tune how far Compare drills into a differing table. The zero
// value is ready to use.
type Options struct {
	// LeafRows: once a mismatching key range holds at most this many rows
	// on both sides, the rows' keys and hashes are listed and diffed
	// (default 256). Larger values
	// mean fewer bisection queries but more keys read into the daemon.
	LeafRows int
	// MaxKeys caps the differing keys reported per table (default 20), so a
	// target that misses everything costs a bounded amount of work and the
	// report stays readable.
	MaxKeys int
	// NoCounts makes CompareKeys compare only the given keys' rows, not
	// the tables' row counts, whose cost grows with the tenant: for a
	// caller that knows every key changed since a full comparison.
	NoCounts bool
}

func (o Options) withDefaults() Options {
	if o.LeafRows <= 0 {
		o.LeafRows = 256
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = 20
	}
	return o
}

// TableResult is one table's comparison, kept whole so that a caller can
// log the checksums and counts it based its decision on.
type TableResult struct {
	Table                  *promoted.Table
	SourceRows, TargetRows int64
	// SourceHash and TargetHash are the checksums: the decimal text of the
	// exact sum of the rows' 64-bit hashes.
	SourceHash, TargetHash string
	// Missing, Extra and Different are primary keys as PostgreSQL prints the
	// key row (e.g. "(1,42)"): rows missing from the target, extra on the
	// target, and present on both sides with different values.
	Missing, Extra, Different []string
	// Truncated is set when more differing keys existed than
	// Options.MaxKeys.
	Truncated bool
	// Ranges counts the key ranges compared below the whole table: zero
	// when the totals matched, and a measure of the drill-down's cost.
	Ranges int
	// OrderDiffers is set when the two sides order the primary key
	// differently (a text key under different collations): the keys were
	// then compared in byte order, and the target's key index sorts rows
	// differently from the source's, which queries may notice.
	OrderDiffers bool
	// Duration is the table's share of the comparison, for logs.
	Duration time.Duration
	// KeysOnly is set when only given keys were compared, not the counts.
	KeysOnly bool
}

// Equal reports whether the table holds the same rows on both sides: the
// same count and checksum, and no differing key found.
func (r TableResult) Equal() bool {
	return r.SourceRows == r.TargetRows && r.SourceHash == r.TargetHash &&
		len(r.Missing)+len(r.Extra)+len(r.Different) == 0
}

// Result is the comparison of every table of the move.
type Result struct {
	// Tables holds one result per table, in the order they were given.
	Tables []TableResult
	// Rows is the number of source rows compared, for throughput logs.
	Rows int64
	// Duration is the whole comparison, session checks included.
	Duration time.Duration
}

// Equal reports whether every table is equal: the cutover flips the
// catalog only when it is.
func (r *Result) Equal() bool {
	for _, t := range r.Tables {
		if !t.Equal() {
			return false
		}
	}
	return true
}

// Summary is one line per differing table naming its counts and differing
// keys, or "" when everything is equal. It is written for an error message
// an operator reads, so it names keys rather than checksums.
func (r *Result) Summary() string {
	var lines []string
	for _, t := range r.Tables {
		if t.Equal() {
			continue
		}
		var b strings.Builder
		if t.KeysOnly {
			fmt.Fprintf(&b, "%s: rows changed since the last check before the fence", t.Table)
		} else {
			fmt.Fprintf(&b, "%s: %d rows on the source, %d on the target", t.Table, t.SourceRows, t.TargetRows)
		}
		keys := func(what string, ks []string) {
			if len(ks) > 0 {
				fmt.Fprintf(&b, "; %s %s", what, strings.Join(ks, " "))
			}
		}
		keys("missing from the target", t.Missing)
		keys("extra on the target", t.Extra)
		keys("different", t.Different)
		if t.OrderDiffers {
			b.WriteString("; the two sides order the primary key differently (collation)")
		}
		switch {
		case t.Truncated:
			b.WriteString("; and more")
		case len(t.Missing)+len(t.Extra)+len(t.Different) == 0:
			b.WriteString("; checksums differ but no row was isolated")
		}
		lines = append(lines, b.String())
	}
	return strings.Join(lines, "\n")
}

// Compare compares the tenant's rows of each table: source rows in
// t.Schema.t.Name, target rows in t.TargetSchema.t.TargetName, both
// filtered by the tenant predicate. Each side computes count(*) and an
// order-independent checksum inside the database, so no rows travel to the
// daemon; on a mismatch it bisects by primary-key ranges (boundaries taken
// from the source, the same ranges evaluated on both sides), recursing into
// mismatching ranges until a range holds at most LeafRows rows on both
// sides, then lists (key, row hash) for that range from both sides and diffs
// them into Missing, Extra and Different.
//
// A difference is a Result that is not Equal, not an error; errors are
// failed queries and sessions without promoted.SessionParams. When src and
// dst are distinct connections the two sides are queried concurrently.
func Compare(ctx context.Context, src, dst Querier, tables []*promoted.Table, opts Options) (*Result, error) {
	start := time.Now()
	if src == nil || dst == nil {
		return nil, fmt.Errorf("verify: both a source and a target session are needed")
	}
	if err := checkSession(ctx, src, "source"); err != nil {
		return nil, err
	}
	if err := checkSession(ctx, dst, "target"); err != nil {
		return nil, err
	}
	c := &comparer{opts: opts.withDefaults(), src: src, dst: dst, parallel: !sameSession(src, dst)}
	res := &Result{Tables: make([]TableResult, 0, len(tables))}
	for _, t := range tables {
		tr, err := c.table(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", t, err)
		}
		res.Tables = append(res.Tables, tr)
		res.Rows += tr.SourceRows
	}
	res.Duration = time.Since(start)
	return res, nil
}

// checkSession refuses a session whose text output settings differ from
// promoted.SessionParams: a timestamptz prints differently under another
// TimeZone, so the checksums would differ although the rows are the same
// (docs/hazards.md 10.2), and the move would be failed for nothing.
func checkSession(ctx context.Context, q Querier, side string) error {
	names := make([]string, 0, len(promoted.SessionParams))
	for name := range promoted.SessionParams {
		names = append(names, name)
	}
	sort.Strings(names)
	rows, err := q.Query(ctx, `SELECT current_setting(n) FROM unnest($1::text[]) WITH ORDINALITY AS s(n, i) ORDER BY i`, names)
	if err != nil {
		return fmt.Errorf("verify: read the %s session's settings: %w", side, err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("verify: read the %s session's settings: %w", side, err)
	}
	for i, name := range names {
		if want := promoted.SessionParams[name]; i >= len(got) || !strings.EqualFold(got[i], want) {
			return fmt.Errorf("verify: the %s session runs with %s = %q, not %q: values would print differently on the two sides, so open it with promoted.SessionParams", side, name, at(got, i), want)
		}
	}
	return nil
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return ""
}

// sameSession reports whether src and dst are (or run on) the same
// connection, which cannot run two queries at once: a move into a schema of
// the same database may pass one connection for both sides.
func sameSession(a, b Querier) bool {
	ka, kb := sessionKey(a), sessionKey(b)
	ta, tb := reflect.TypeOf(ka), reflect.TypeOf(kb)
	if ta != tb {
		return false
	}
	if ta == nil || !ta.Comparable() {
		return true // cannot tell: one query at a time is always safe
	}
	return ka == kb
}

// sessionKey is the connection a Querier runs on, when it can tell.
func sessionKey(q Querier) any {
	switch v := q.(type) {
	case *pgx.Conn:
		return v
	case interface{ Conn() *pgx.Conn }:
		return v.Conn()
	}
	return q
}
