package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/testenv"
)

// cutovers promotes tenants of a SaaS database one after another while
// writers that follow the catalog run on every tenant, and returns how
// long each promotion blocked its tenant's writes. Each promotion goes to
// a fresh target database; between them the source is reset to the
// tenant's pooled state (fence and catalog entry removed).
func (e *env) cutovers(ctx context.Context) ([]float64, error) {
	if _, err := e.src.CreateDB(ctx, "cutover"); err != nil {
		return nil, err
	}
	pooled, err := e.src.GrantTenantDB(ctx, "cutover")
	if err != nil {
		return nil, err
	}
	if err := pooled.SeedAsOwner(ctx, e.size.Customers/100, 1); err != nil {
		return nil, err
	}
	srcDSN := pooled.Admin
	var blocked []float64
	for i := 0; i < e.size.Promotions; i++ {
		tenant := 1 + i%5
		dstDSN, err := e.newTarget(ctx, "promotion")
		if err != nil {
			return nil, err
		}
		dstApp := strings.Replace(e.mover(dstDSN), "//"+testenv.Mover+"@", "//"+testenv.App+"@", 1)
		router := &testenv.Router{CatalogDSN: pooled.App, Default: pooled.App, DSN: func(loc string) string {
			if loc == job.Redact(e.mover(dstDSN)) {
				return dstApp
			}
			return pooled.App
		}}
		stop, err := testenv.LoadRouted(ctx, pooled.App, []int{1, 2, 3, 4, 5}, 1, router)
		if err != nil {
			return nil, err
		}
		cfg := job.Config{SourceDSN: pooled.Mover, TargetDSN: e.mover(dstDSN), Tenant: fmt.Sprint(tenant), Tables: testenv.MovedTables, Promote: true,
			Cutover: cutover.Config{Timeout: 5 * time.Second}}
		j, err := job.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil {
			err = j.Run(ctx)
		}
		time.Sleep(300 * time.Millisecond) // the writers follow the flip
		writers := stop()
		router.Close()
		if err != nil {
			return nil, fmt.Errorf("promotion %d of tenant %d: %w", i+1, tenant, err)
		}
		for _, w := range writers {
			if w.Errs.Load() > 0 {
				return nil, fmt.Errorf("promotion %d: a writer of tenant %d failed: %v", i+1, w.Tenant, w.Last.Load())
			}
		}
		blocked = append(blocked, float64(j.Summary().Cutover.Blocked.Microseconds())/1000)
		// Back to pooled: the source becomes authoritative again.
		if err := exec1(ctx, srcDSN, `DELETE FROM promoted.fence; DELETE FROM promoted.tenant_catalog; DELETE FROM promoted.flips; DELETE FROM promoted.jobs`); err != nil {
			return nil, err
		}
	}
	return blocked, nil
}
