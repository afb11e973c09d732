package verify

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
)

// fanout is how many sub-ranges a mismatching range is split into per
// level: each level costs one ordered key scan of the range on one side and
// one checksum scan on each side, whatever the fanout.
const fanout = 16

// comparer runs one Compare.
type comparer struct {
	opts     Options
	src, dst Querier
	// parallel is false when both sides share one connection.
	parallel bool
}

// both runs a query on each side, concurrently when the sides are distinct
// connections, so a comparison costs the slower side, not the sum.
func (c *comparer) both(ctx context.Context, onSrc, onDst func(context.Context) error) error {
	if !c.parallel {
		if err := onSrc(ctx); err != nil {
			return err
		}
		return onDst(ctx)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return onSrc(gctx) })
	g.Go(func() error { return onDst(gctx) })
	return g.Wait()
}

// sums counts and checksums a range on both sides, bucketed by bounds.
func (c *comparer) sums(ctx context.Context, ts *tableSQL, r keyRange, bounds [][]string) (src, dst []sums, err error) {
	err = c.both(ctx, func(ctx context.Context) (err error) {
		sql, args := ts.sumsSQL(ts.src, r, bounds)
		src, err = querySums(ctx, c.src, sql, args, len(bounds)+1)
		return err
	}, func(ctx context.Context) (err error) {
		sql, args := ts.sumsSQL(ts.dst, r, bounds)
		dst, err = querySums(ctx, c.dst, sql, args, len(bounds)+1)
		return err
	})
	return src, dst, err
}

// table compares one table: the totals first, then, only when they
// differ, the drill-down that names the keys.
func (c *comparer) table(ctx context.Context, t *promoted.Table) (TableResult, error) {
	start := time.Now()
	src, dst, err := c.sums(ctx, newTableSQL(t, nil), keyRange{}, nil)
	if err != nil {
		return TableResult{Table: t}, err
	}
	return c.settle(ctx, t, src[0], dst[0], start)
}

// settle is a table's result from its totals on each side, drilling into
// the table for the differing keys when they differ.
func (c *comparer) settle(ctx context.Context, t *promoted.Table, s, d sums, start time.Time) (TableResult, error) {
	res := TableResult{Table: t}
	res.SourceRows, res.SourceHash = s.n, s.hash
	res.TargetRows, res.TargetHash = d.n, d.hash
	if s != d && len(t.PrimaryKey) > 0 {
		st, err := c.drillTable(ctx, newTableSQL(t, nil), s, d, &res)
		if err != nil {
			return res, err
		}
		res.Missing, res.Extra, res.Different, res.Truncated = st.report()
	}
	res.Duration = time.Since(start)
	return res, nil
}

// drillTable names the differing keys of a table whose totals differ. It
// drills in each side's own key order first, which the key index serves;
// when the sides turn out to order the key differently, it starts over
// comparing the collatable key columns in byte order, which is the same
// everywhere but leaves the index unused for the ranges.
func (c *comparer) drillTable(ctx context.Context, ts *tableSQL, s, d sums, res *TableResult) (*diff, error) {
	st := newDiff(c.opts.MaxKeys)
	err := c.drill(ctx, ts, keyRange{}, s, d, st, res)
	if !errors.Is(err, errUnordered) {
		return st, err
	}
	res.OrderDiffers = true
	collate, err := collatable(ctx, c.src, ts.t)
	if err != nil {
		return nil, err
	}
	ts, st = newTableSQL(ts.t, collate), newDiff(c.opts.MaxKeys)
	if !ts.collated {
		// No key column has a collation (an enum whose labels are ordered
		// differently): the keys cannot be isolated, and the totals
		// already say the table differs.
		return st, nil
	}
	return st, c.drill(ctx, ts, keyRange{}, s, d, st, res)
}

// errMoving means the rows changed between two queries of one comparison:
// the caller compared outside a consistent point.
var errMoving = errors.New("the rows changed while they were compared: compare under the fence or an exported snapshot")

// errUnordered means the two sides order the primary key differently, so a
// key range does not hold the same rows on both sides (docs/hazards.md 10.3).
var errUnordered = errors.New("the source and the target order the primary key differently")

// drill narrows a mismatching range whose sums are s and d. Ranges are split
// at keys of the side that has more than LeafRows rows in it (the source,
// unless only the target is large), and the same sub-ranges are evaluated
// on both sides; mismatching sub-ranges are drilled in key order until both
// sides are small enough to list.
func (c *comparer) drill(ctx context.Context, ts *tableSQL, r keyRange, s, d sums, st *diff, res *TableResult) error {
	if st.full() {
		return nil
	}
	leaf := int64(c.opts.LeafRows)
	switch {
	case s.n <= leaf && d.n <= leaf:
		return c.leaf(ctx, ts, r, 0, st)
	case s.n == 0 || d.n == 0:
		// Every row of the range is a difference: list only as many as
		// can still be reported.
		return c.leaf(ctx, ts, r, st.room()+1, st)
	}
	q, rel, n, other, orel := c.src, ts.src, s.n, c.dst, ts.dst
	if s.n <= leaf {
		q, rel, n, other, orel = c.dst, ts.dst, d.n, c.src, ts.src
	}
	parts := min(max((n+leaf-1)/leaf, 2), fanout)
	step := (n + parts - 1) / parts
	sql, args := ts.boundsSQL(rel, r, step, n)
	bounds, err := queryBounds(ctx, q, sql, args)
	if err != nil {
		return err
	}
	if len(bounds) == 0 {
		return errMoving
	}
	if !ts.collated && len(bounds) > 1 {
		if err := checkOrder(ctx, other, ts, orel, bounds); err != nil {
			return err
		}
	}
	src, dst, err := c.sums(ctx, ts, r, bounds)
	if err != nil {
		return err
	}
	res.Ranges += len(bounds) + 1
	for i := 0; i <= len(bounds); i++ {
		sub := r
		if i > 0 {
			sub.lo = bounds[i-1]
		}
		if i < len(bounds) {
			sub.hi = bounds[i]
		}
		bs, bd := src[i], dst[i]
		if bs == bd {
			continue
		}
		if bs == s && bd == d {
			// The split did not narrow anything: the side's rows moved.
			return errMoving
		}
		if err := c.drill(ctx, ts, sub, bs, bd, st, res); err != nil {
			return err
		}
	}
	return nil
}

// leaf lists a range's keys and row hashes on both sides and diffs them.
func (c *comparer) leaf(ctx context.Context, ts *tableSQL, r keyRange, limit int, st *diff) error {
	var src, dst []keyHash
	err := c.both(ctx, func(ctx context.Context) (err error) {
		sql, args := ts.listSQL(ts.src, r, limit)
		src, err = queryList(ctx, c.src, sql, args)
		return err
	}, func(ctx context.Context) (err error) {
		sql, args := ts.listSQL(ts.dst, r, limit)
		dst, err = queryList(ctx, c.dst, sql, args)
		return err
	})
	if err != nil {
		return err
	}
	if !ts.collated {
		// A range holds the same rows on both sides only if both order
		// its keys alike: with a single boundary nothing else checked
		// that, and the diff could fill up with rows that merely sort
		// into another range on the other side.
		for _, side := range []struct {
			keys []keyHash
			q    Querier
			rel  string
		}{{src, c.dst, ts.dst}, {dst, c.src, ts.src}} {
			if len(side.keys) < 2 {
				continue
			}
			keys := make([][]string, len(side.keys))
			for i, k := range side.keys {
				keys[i] = k.cols
			}
			if err := checkOrder(ctx, side.q, ts, side.rel, keys); err != nil {
				return err
			}
		}
	}
	if st.add(src, dst) && !ts.collated {
		return errUnordered
	}
	return nil
}

// checkOrder asks a side to order the boundary keys that it holds: they
// must come back in the order the other side gave them.
func checkOrder(ctx context.Context, q Querier, ts *tableSQL, rel string, bounds [][]string) error {
	pos := make(map[string]int, len(bounds))
	for i, b := range bounds {
		pos[strings.Join(b, "\x00")] = i
	}
	sql, args := ts.orderSQL(rel, bounds)
	got, err := queryBounds(ctx, q, sql, args)
	if err != nil {
		return err
	}
	last := -1
	for _, k := range got {
		i, ok := pos[strings.Join(k, "\x00")]
		if !ok || i <= last {
			return errUnordered
		}
		last = i
	}
	return nil
}

// collatable reports which key columns are of a collatable type, from the
// source's catalog (the key's type OIDs are the source's).
func collatable(ctx context.Context, q Querier, t *promoted.Table) ([]bool, error) {
	oids := make([]int64, len(t.PrimaryKey))
	for i, k := range t.PrimaryKey {
		oids[i] = int64(t.Columns[k].TypeOID)
	}
	rows, err := q.Query(ctx, `SELECT coalesce(ty.typcollation <> 0, false)
		FROM unnest($1::int8[]) WITH ORDINALITY AS k(oid, i) LEFT JOIN pg_type ty ON ty.oid = k.oid::oid ORDER BY k.i`, oids)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[bool])
}
