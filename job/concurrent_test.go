package job

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/testenv"
)

// TestThreeTenantsAtOnce promotes tenants 1, 2 and 3 of one pooled
// database at the same time, into two targets (1 into database A,
// 3 into a schema of its own there, 2 into database B), while writers that
// follow the catalog write all four tenants. Each move has its own lease,
// slot and publication; all three must flip, each target must equal its
// tenant's fenced source rows at its drain, row by row, every write a
// writer saw acknowledged must be at the tenant's new location, and
// tenant 4 must never be fenced (issue 13: concurrent moves).
func TestThreeTenantsAtOnce(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 5)
	a, b := dst.NewTenantDB(t), dst.NewTenantDB(t)
	router := &testenv.Router{CatalogDSN: s.App, Default: s.App, DSN: func(loc string) string {
		switch loc {
		case Redact(a.Mover):
			return a.App
		case Redact(b.Mover):
			return b.App
		}
		return s.App
	}}
	t.Cleanup(router.Close)
	type move struct {
		tenant       string
		to           testenv.TenantDB
		schema       string
		job          *Job
		atDrain      *pgx.Conn
		armed, flips time.Time
	}
	moves := []*move{{tenant: "1", to: a, schema: "public"}, {tenant: "2", to: b, schema: "public"}, {tenant: "3", to: a, schema: "tenant_3"}}
	for _, m := range moves {
		j, err := New(Config{SourceDSN: s.Mover, TargetDSN: m.to.Mover, Tenant: m.tenant, TargetSchema: m.schema, Tables: movedTables,
			Promote: true, Cutover: cutover.Config{Timeout: 5 * time.Second, FenceCheck: cutover.CheckChanged}}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		j.cfg.Copy.Parallel, j.cfg.Copy.ChunkRows = 2, 200
		m.job, m.atDrain = j, connectPinned(t, ctx, m.to.Admin)
		defer m.atDrain.Close(ctx)
		j.Hooks.Cutover.BeforeArm = func() { m.armed = time.Now() }
		j.Hooks.Cutover.AfterFlip = func() { m.flips = time.Now() }
		j.Hooks.Cutover.AfterDrain = func() {
			if _, err := m.atDrain.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1"); err != nil {
				t.Error(err)
			}
		}
	}
	stop, err := testenv.LoadRouted(ctx, s.App, []int{1, 2, 3, 4}, 1, router)
	if err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	for _, m := range moves {
		g.Go(func() error {
			if err := m.job.Run(ctx); err != nil {
				return fmt.Errorf("promote tenant %s: %w", m.tenant, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		stop()
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the writers carry on at the new locations
	writers := stop()
	// The three moves overlapped: each was armed before another flipped.
	overlap := 0
	for _, m := range moves {
		for _, o := range moves {
			if m != o && m.armed.Before(o.flips) && o.armed.Before(m.flips) {
				overlap++
			}
		}
	}
	if overlap == 0 {
		t.Log("the three cutovers did not overlap (the copies and catch-ups did)")
	}
	fenced := connectPinned(t, ctx, s.Admin)
	defer fenced.Close(ctx)
	for _, m := range moves {
		testenv.CompareTenant(t, ctx, fenced, m.atDrain, "public", m.schema, "tenant_id", m.tenant, movedTables)
		var loc, schema string
		if err := fenced.QueryRow(ctx, `SELECT location, schema_name FROM promoted.tenant_catalog WHERE tenant_id = $1`, m.tenant).Scan(&loc, &schema); err != nil {
			t.Fatal(err)
		}
		if loc != Redact(m.to.Mover) || schema != m.schema {
			t.Errorf("catalog of tenant %s: %s %s, want %s %s", m.tenant, loc, schema, Redact(m.to.Mover), m.schema)
		}
		d := connectPinned(t, ctx, m.to.Admin)
		have := map[string]bool{}
		for _, e := range rowsOf(t, ctx, d, fmt.Sprintf(`SELECT email FROM %s WHERE tenant_id = $1 AND email LIKE 'ledger-%%'`,
			pgx.Identifier{m.schema, "customers"}.Sanitize()), m.tenant) {
			have[e] = true
		}
		d.Close(ctx)
		n := 0
		for _, w := range writers {
			if fmt.Sprint(w.Tenant) != m.tenant {
				continue
			}
			if !w.Moved.Load() {
				t.Errorf("writer %d of tenant %s never moved to the new location", w.ID, m.tenant)
			}
			for _, e := range w.Ledger() {
				n++
				if !have[e] {
					t.Errorf("tenant %s: acknowledged write %s is not at its new location", m.tenant, e)
				}
			}
		}
		if n == 0 {
			t.Errorf("tenant %s: no acknowledged ledger write: the test proves nothing", m.tenant)
		}
	}
	for _, w := range writers {
		if w.Errs.Load() > 0 {
			t.Errorf("writer %d on tenant %d saw %d errors other than the fence, last: %v", w.ID, w.Tenant, w.Errs.Load(), w.Last.Load())
		}
		if w.Tenant == 4 && (w.Fenced.Load() > 0 || w.Moved.Load()) {
			t.Errorf("the writer of tenant 4, which no move touches, was fenced %d times (moved %v)", w.Fenced.Load(), w.Moved.Load())
		}
	}
	if n := queryOne[int64](t, ctx, s.Admin, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Errorf("%d slots left on the source after three flips", n)
	}
}
