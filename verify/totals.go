package verify

import (
	"context"
	"fmt"
	"time"

	"github.com/promoted/promoted"
)

// Totals is one side's row count and checksum of every table, taken on its
// own. A promotion's copy check sums the source at the snapshot the copy
// read while the target builds its keys, and the target once they are
// built: each side works on its own database's time, and neither waits for
// the other (docs/hazards.md 10.4).
type Totals struct {
	onSource bool
	tables   []*promoted.Table
	sums     []sums
	// Rows is the rows counted, for throughput logs.
	Rows int64
	// Duration is how long the side took.
	Duration time.Duration
}

// SourceTotals counts and checksums the tenant's rows of each table on the
// source, as q sees them (a transaction at an exported snapshot).
func SourceTotals(ctx context.Context, q Querier, tables []*promoted.Table) (*Totals, error) {
	return total(ctx, q, tables, true)
}

// TargetTotals counts and checksums the tenant's rows of each table on the
// target.
func TargetTotals(ctx context.Context, q Querier, tables []*promoted.Table) (*Totals, error) {
	return total(ctx, q, tables, false)
}

func total(ctx context.Context, q Querier, tables []*promoted.Table, onSource bool) (*Totals, error) {
	start := time.Now()
	side := "target"
	if onSource {
		side = "source"
	}
	if err := checkSession(ctx, q, side); err != nil {
		return nil, err
	}
	tt := &Totals{onSource: onSource, tables: tables, sums: make([]sums, len(tables))}
	for i, t := range tables {
		ts := newTableSQL(t, nil)
		rel := ts.dst
		if onSource {
			rel = ts.src
		}
		sql, args := ts.sumsSQL(rel, keyRange{}, nil)
		s, err := querySums(ctx, q, sql, args, 1)
		if err != nil {
			return nil, fmt.Errorf("verify %s on the %s: %w", t, side, err)
		}
		tt.sums[i] = s[0]
		tt.Rows += s[0].n
	}
	tt.Duration = time.Since(start)
	return tt, nil
}

// CompareTotals is Compare for totals taken apart: a table whose totals
// agree is reported from them; one whose totals differ is drilled into
// with src and dst, which must still see what they totalled (the same
// snapshot on the source, no change applied since on the target), so the
// report names the differing keys as Compare's does.
func CompareTotals(ctx context.Context, src, dst Querier, s, d *Totals, opts Options) (*Result, error) {
	start := time.Now()
	if s == nil || d == nil || !s.onSource || d.onSource || len(s.tables) != len(d.tables) {
		return nil, fmt.Errorf("verify: compare a source's totals with a target's, of the same tables")
	}
	c := &comparer{opts: opts.withDefaults(), src: src, dst: dst, parallel: !sameSession(src, dst)}
	res := &Result{Tables: make([]TableResult, 0, len(s.tables))}
	for i, t := range s.tables {
		if d.tables[i] != t {
			return nil, fmt.Errorf("verify: the totals list different tables (%s, %s)", t, d.tables[i])
		}
		tr, err := c.settle(ctx, t, s.sums[i], d.sums[i], time.Now())
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", t, err)
		}
		res.Tables = append(res.Tables, tr)
		res.Rows += tr.SourceRows
	}
	res.Duration = time.Since(start)
	return res, nil
}
