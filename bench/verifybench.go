package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/testenv"
	"github.com/promoted/promoted/verify"
)

func pinned(ctx context.Context, dsn string) (*pgx.Conn, error) {
	return testenv.PinnedConn(ctx, dsn)
}

// verifySpeed compares the moving tenant between the source and a copied
// target with promoted's verify, and with the raw checksum query (count
// and a sum of 64-bit hashes per table, both sides at once) on the same
// rows. It returns rows/s of each.
func (e *env) verifySpeed(ctx context.Context, dstDSN string) (prom, raw []float64, err error) {
	s, err := pinned(ctx, e.srcMover)
	if err != nil {
		return nil, nil, err
	}
	defer s.Close(ctx)
	d, err := pinned(ctx, dstDSN)
	if err != nil {
		return nil, nil, err
	}
	defer d.Close(ctx)
	plan, err := schema.Load(ctx, s, schema.Config{Schema: "public", TargetSchema: "public", TenantColumn: "tenant_id", Tables: benchTables, Tenant: "1"})
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i < e.size.Repeats; i++ {
		res, err := verify.Compare(ctx, s, d, plan.Tables, verify.Options{})
		if err != nil {
			return nil, nil, err
		}
		if !res.Equal() {
			return nil, nil, fmt.Errorf("verify found differences in a quiet copy: %s", res.Summary())
		}
		prom = append(prom, float64(res.Rows)/res.Duration.Seconds())
		start := time.Now()
		var rows int64
		for _, t := range benchTables {
			q := fmt.Sprintf("SELECT count(*), coalesce(sum(hashtextextended(x::text, 0)), 0)::text FROM %s x WHERE %s", t, tenantWhere)
			var n1, n2 int64
			var h1, h2 string
			var g errgroup.Group
			g.Go(func() error { return s.QueryRow(ctx, q).Scan(&n1, &h1) })
			g.Go(func() error { return d.QueryRow(ctx, q).Scan(&n2, &h2) })
			if err := g.Wait(); err != nil {
				return nil, nil, err
			}
			if n1 != n2 || h1 != h2 {
				return nil, nil, fmt.Errorf("raw checksum differs on %s", t)
			}
			rows += n1
		}
		raw = append(raw, float64(rows)/time.Since(start).Seconds())
	}
	return prom, raw, nil
}
