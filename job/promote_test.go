package job

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/testenv"
)

// promotion is one promote run under routed load, with the times of its
// irreversible steps as the test saw them. promoted runs as the mover and
// the writers as the application role; srcDSN and dstDSN are the mover's
// too, for the test's own checks: nothing they read needs more.
type promotion struct {
	srcDSN, dstDSN, dstSchema string
	src, dst                  testenv.TenantDB
	job                       *Job
	router                    *testenv.Router
	armedAt, flippedAt        time.Time
}

// newPromotion prepares a promotion of tenant 1 into a schema of the same
// database, or a second cluster; the second re-checks only the changed
// rows under the fence, the first compares everything again.
func newPromotion(t *testing.T, second bool) *promotion {
	t.Helper()
	p := &promotion{src: src.NewSaaS(t, 60, 5)}
	p.dst, p.dstSchema = p.src, "tenant_1"
	if second {
		p.dst, p.dstSchema = dst.NewTenantDB(t), "public"
	}
	p.srcDSN, p.dstDSN = p.src.Mover, p.dst.Mover
	p.router = &testenv.Router{CatalogDSN: p.src.App, Default: p.src.App, DSN: func(loc string) string {
		if loc == Redact(p.dst.Mover) {
			return p.dst.App
		}
		return p.src.App
	}}
	t.Cleanup(p.router.Close)
	j, err := New(Config{SourceDSN: p.src.Mover, TargetDSN: p.dst.Mover, Tenant: "1", TargetSchema: p.dstSchema, Tables: movedTables,
		Promote: true, Cutover: cutover.Config{Timeout: 5 * time.Second, FenceCheck: map[bool]string{false: cutover.CheckFull, true: cutover.CheckChanged}[second]}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	j.cfg.Copy.Parallel, j.cfg.Copy.ChunkRows = 2, 300
	j.Hooks.AfterChunk = func(string) { time.Sleep(50 * time.Millisecond) }
	j.Hooks.Cutover.BeforeArm = func() { p.armedAt = time.Now() }
	j.Hooks.Cutover.AfterFlip = func() { p.flippedAt = time.Now() }
	p.job = j
	return p
}

// TestPromoteUnderLoad promotes tenant 1 while writers that follow the
// catalog run on it and on two other tenants, before, during and after the
// cutover (invariants 1, 3 and 5; DESIGN.md write fence and catalog).
func TestPromoteUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name   string
		second bool
	}{{"same_database", false}, {"second_cluster", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			p := newPromotion(t, tc.second)
			stop, err := testenv.LoadRouted(ctx, p.src.App, []int{1, 2, 3}, 2, p.router)
			if err != nil {
				t.Fatal(err)
			}
			// Under the fence, after the drain, source and target are both
			// still for tenant 1: pin a snapshot of the target there (cheap,
			// so the blocked time stays honest) and compare row by row with
			// the fenced source afterwards.
			atDrain := connectPinned(t, ctx, p.dstDSN)
			defer atDrain.Close(ctx)
			p.job.Hooks.Cutover.AfterDrain = func() {
				if _, err := atDrain.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1"); err != nil {
					t.Error(err)
				}
			}
			if err := p.job.Run(ctx); err != nil {
				stop()
				t.Fatalf("promote: %v", err)
			}
			time.Sleep(time.Second) // the writers carry on at the new location
			writers := stop()
			sum := p.job.Summary()
			if sum == nil || sum.Cutover == nil || sum.Cutover.Verify == nil || !sum.Cutover.Verify.Equal() {
				t.Fatalf("summary %+v: want a verified cutover", sum)
			}
			t.Logf("writes blocked %d ms, lag at fence %d bytes, %d changes applied, %d rows verified",
				sum.Cutover.Blocked.Milliseconds(), sum.Cutover.LagAtFence, sum.Changes, sum.Cutover.Verify.Rows)

			fenced := connectPinned(t, ctx, p.srcDSN)
			compareTenantConns(t, ctx, fenced, atDrain, "public", p.dstSchema, "1", movedTables)
			fenced.Close(ctx)
			checkWriters(t, writers, p)
			checkLedger(t, ctx, writers, p)
			checkCatalogAndSource(t, ctx, p, 2)
			// Sequences: a default id at the new location never collides
			// with a copied one.
			// The application's role writes there: the grants came along.
			mustExec(t, ctx, p.dst.App, fmt.Sprintf(`INSERT INTO %s (tenant_id, email) SELECT 1, 'after-flip-' || g FROM generate_series(1, 50) g`,
				pgx.Identifier{p.dstSchema, "customers"}.Sanitize()))
		})
	}
}

func checkWriters(t *testing.T, writers []*testenv.Writer, p *promotion) {
	t.Helper()
	for _, w := range writers {
		if w.Errs.Load() > 0 {
			t.Errorf("writer %d on tenant %d saw %d errors other than the fence, last: %v", w.ID, w.Tenant, w.Errs.Load(), w.Last.Load())
		}
		if w.Tenant != 1 {
			if w.Fenced.Load() > 0 || w.Moved.Load() {
				t.Errorf("writer on tenant %d was fenced %d times (moved %v): only tenant 1 moves", w.Tenant, w.Fenced.Load(), w.Moved.Load())
			}
			continue
		}
		if !w.Moved.Load() {
			t.Errorf("writer %d of tenant 1 never moved to the new location", w.ID)
		}
		if first, ok := w.FirstFenced.Load().(time.Time); ok && first.Before(p.armedAt) {
			t.Errorf("writer %d of tenant 1 was fenced at %s, before the fence was armed at %s", w.ID, first, p.armedAt)
		}
		if w.Acks.Load() == 0 {
			t.Errorf("writer %d of tenant 1 wrote nothing", w.ID)
		}
	}
}

// checkLedger checks every customer insert a writer of tenant 1 saw
// acknowledged, at either location, is in the target.
func checkLedger(t *testing.T, ctx context.Context, writers []*testenv.Writer, p *promotion) {
	t.Helper()
	d := connectPinned(t, ctx, p.dstDSN)
	defer d.Close(ctx)
	have := map[string]bool{}
	for _, e := range rowsOf(t, ctx, d, fmt.Sprintf(`SELECT email FROM %s WHERE tenant_id = 1 AND email LIKE 'ledger-%%'`,
		pgx.Identifier{p.dstSchema, "customers"}.Sanitize())) {
		have[e] = true
	}
	n := 0
	for _, w := range writers {
		if w.Tenant != 1 {
			continue
		}
		for _, e := range w.Ledger() {
			n++
			if !have[e] {
				t.Errorf("acknowledged write %s is not in the target", e)
			}
		}
	}
	if n == 0 {
		t.Error("no acknowledged ledger write: the test proves nothing")
	}
}

// checkCatalogAndSource checks the catalog names the target with the
// expected version, the slot and publication are gone, and the fence
// still rejects the tenant's writes on the source.
func checkCatalogAndSource(t *testing.T, ctx context.Context, p *promotion, version int64) {
	t.Helper()
	s := connectPinned(t, ctx, p.srcDSN)
	defer s.Close(ctx)
	var loc, schema string
	var v int64
	if err := s.QueryRow(ctx, `SELECT location, schema_name, version FROM promoted.tenant_catalog WHERE tenant_id = '1'`).Scan(&loc, &schema, &v); err != nil {
		t.Fatal(err)
	}
	if loc != Redact(p.dst.Mover) || schema != p.dstSchema || v != version {
		t.Errorf("catalog: %s %s v%d, want %s %s v%d", loc, schema, v, Redact(p.dst.Mover), p.dstSchema, version)
	}
	// The promotion's own slot and publication are gone; the rollback's,
	// on the target (which may be this database), stay until cleanup.
	d := connectPinned(t, ctx, p.dst.Admin)
	defer d.Close(ctx)
	_, reverse, err := reverseNames(ctx, d, p.dstSchema, "1")
	if err != nil {
		t.Fatal(err)
	}
	if n := queryOne[int64](t, ctx, p.dst.Admin, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, reverse.Slot); n != 1 {
		t.Errorf("the rollback slot %s is missing on the target after the flip", reverse.Slot)
	}
	var leftovers int
	if err := s.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND slot_name <> $1) + (SELECT count(*) FROM pg_publication WHERE pubname <> $1)`, reverse.Slot).Scan(&leftovers); err != nil {
		t.Fatal(err)
	}
	if leftovers != 0 {
		t.Errorf("%d slots or publications left after the flip", leftovers)
	}
	app := connectPinned(t, ctx, p.src.App)
	defer app.Close(ctx)
	_, err = app.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES (1, 'stray')`)
	if err == nil || !strings.Contains(err.Error(), "PM001") {
		t.Errorf("a stray write to the old location: %v, want SQLSTATE PM001", err)
	}
	if _, err := app.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES (2, 'neighbour')`); err != nil {
		t.Errorf("another tenant's write failed: %v", err)
	}
}

// TestCutoverTimeoutDisarms holds the apply so the drain cannot finish in
// --cutover-timeout: the fence must be disarmed, the catalog unchanged,
// and the tenant able to write to the source again.
func TestCutoverTimeoutDisarms(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.cfg.Cutover.Timeout = 700 * time.Millisecond
	hold := connectPinned(t, ctx, p.dstDSN)
	defer hold.Close(ctx)
	var once sync.Once
	var armedAt float64
	failed := gathered(t, "promoted_job_failures_total")
	p.job.Hooks.Cutover.AfterArm = func() {
		once.Do(func() {
			armedAt = gathered(t, "promoted_cutover_fence_armed_timestamp_seconds")
			// The apply's next commit updates this row: it waits.
			if _, err := hold.Exec(ctx, `BEGIN; SELECT 1 FROM promoted.progress FOR UPDATE`); err != nil {
				t.Error(err)
			}
		})
	}
	err := p.job.Run(ctx)
	hold.Exec(ctx, "ROLLBACK")
	if err == nil || !strings.Contains(err.Error(), "cutover-timeout") {
		t.Fatalf("promote returned %v, want a cutover timeout", err)
	}
	t.Logf("error: %v", err)
	if now := float64(time.Now().Unix()); armedAt < now-60 || armedAt > now {
		t.Errorf("promoted_cutover_fence_armed_timestamp_seconds was %v while armed, want about %v", armedAt, now)
	}
	if v := gathered(t, "promoted_cutover_fence_armed_timestamp_seconds"); v != 0 {
		t.Errorf("promoted_cutover_fence_armed_timestamp_seconds is %v after the disarm, want 0", v)
	}
	if v := gathered(t, "promoted_cutover_timeout_seconds"); v != 0.7 {
		t.Errorf("promoted_cutover_timeout_seconds is %v, want 0.7", v)
	}
	if n := gathered(t, "promoted_job_failures_total"); n != failed+1 {
		t.Errorf("promoted_job_failures_total went from %v to %v, want one more", failed, n)
	}
	s := connectPinned(t, ctx, p.srcDSN)
	defer s.Close(ctx)
	var fences, version int
	if err := s.QueryRow(ctx, `SELECT (SELECT count(*) FROM promoted.fence), (SELECT version FROM promoted.tenant_catalog WHERE tenant_id = '1')`).Scan(&fences, &version); err != nil {
		t.Fatal(err)
	}
	if fences != 0 || version != 1 {
		t.Errorf("after a timed-out cutover: %d fences armed, catalog version %d; want 0 and 1", fences, version)
	}
	app := connectPinned(t, ctx, p.src.App)
	defer app.Close(ctx)
	if _, err := app.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES (1, 'after timeout')`); err != nil {
		t.Errorf("the tenant cannot write to the source after the cutover gave up: %v", err)
	}
}

// TestOldTransactionsCannotSlipPastTheFence opens, as the application's
// role, a REPEATABLE READ transaction before the fence and writes the
// tenant's row a second after it was armed, long after an unguarded
// cutover would have flipped; in a second case the transaction is also
// PREPAREd after the arm and committed a second later. The barrier must
// see the application's transactions with the mover's privileges only
// (pg_stat_activity hides them), so the write commits before the flip and
// is in the target (docs/hazards.md 9.1, 14.2).
func TestOldTransactionsCannotSlipPastTheFence(t *testing.T) {
	for _, prepared := range []bool{false, true} {
		t.Run(map[bool]string{false: "repeatable_read", true: "prepared"}[prepared], func(t *testing.T) {
			ctx := context.Background()
			p := newPromotion(t, true)
			rr := connectPinned(t, ctx, p.src.App)
			defer rr.Close(ctx)
			// Opened just before the fence is armed (after the
			// verification before it, which waits out older transactions).
			p.job.Hooks.Cutover.BeforeArm = func() {
				p.armedAt = time.Now()
				if _, err := rr.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM customers`); err != nil {
					t.Error(err)
				}
			}
			var wrote error
			var committedAt time.Time
			done := make(chan struct{})
			p.job.Hooks.Cutover.AfterArm = func() {
				go func() {
					defer close(done)
					if prepared {
						_, wrote = rr.Exec(ctx, `UPDATE customers SET name = 'written by an old snapshot' WHERE tenant_id = 1 AND id = (SELECT min(id) FROM customers WHERE tenant_id = 1);
						    PREPARE TRANSACTION 'promoted_test_old'`)
						time.Sleep(time.Second)
						if wrote == nil {
							_, wrote = rr.Exec(ctx, `COMMIT PREPARED 'promoted_test_old'`)
						}
					} else {
						time.Sleep(time.Second)
						_, wrote = rr.Exec(ctx, `UPDATE customers SET name = 'written by an old snapshot' WHERE tenant_id = 1 AND id = (SELECT min(id) FROM customers WHERE tenant_id = 1)`)
						if wrote == nil {
							_, wrote = rr.Exec(ctx, `COMMIT`)
						}
					}
					committedAt = time.Now()
					if wrote != nil {
						rr.Exec(ctx, `ROLLBACK`)
					}
				}()
			}
			if err := p.job.Run(ctx); err != nil {
				t.Fatalf("promote: %v", err)
			}
			<-done
			if wrote != nil {
				t.Fatalf("the old transaction's write failed: %v (the fence must not fail a transaction that began before it, and must never fail with anything but PM001)", wrote)
			}
			if !p.flippedAt.After(committedAt) {
				t.Errorf("the catalog flipped at %s, before the old transaction committed at %s: the barrier did not wait for it", p.flippedAt.Format(time.StampMicro), committedAt.Format(time.StampMicro))
			}
			d := connectPinned(t, ctx, p.dstDSN)
			defer d.Close(ctx)
			var n int
			if err := d.QueryRow(ctx, `SELECT count(*) FROM public.customers WHERE name = 'written by an old snapshot'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatal("a write acknowledged on the source after the fence is missing from the target")
			}
		})
	}
}

// TestSecondPromoteRefused starts a second promote of the same tenant
// while the first runs.
func TestSecondPromoteRefused(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.Hooks.AfterChunk = func(string) { time.Sleep(300 * time.Millisecond) }
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.job.Run(jctx) }()
	waitFor(t, 30*time.Second, "snapshot", func() bool { return p.job.Phase() == "snapshot" })
	second, err := New(Config{SourceDSN: p.src.Mover, TargetDSN: p.dst.Mover, Tenant: "1", Tables: movedTables, Promote: true,
		Cutover: cutover.Config{Timeout: 5 * time.Second}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	err = second.Run(ctx)
	cancel()
	<-done
	if err == nil || !strings.Contains(err.Error(), "already moving tenant 1") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("second promote: %v, want a one-line refusal", err)
	}
	t.Logf("refusal: %v", err)
}

// TestVerifyLive verifies a live replica at a consistent point under load,
// then corrupts, deletes and adds target rows and expects each reported by
// key.
func TestVerifyLive(t *testing.T) {
	ctx := context.Background()
	s, d := src.NewSaaS(t, 60, 5), dst.NewTenantDB(t)
	dstDSN := d.Admin
	stopLoad := load(t, ctx, s.App, []int{1, 2}, 2)
	defer stopLoad()
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: movedTables}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitFor(t, 60*time.Second, "catch-up", func() bool { return j.Phase() == "catchup" })
	for i := 0; i < 3; i++ {
		res, err := j.VerifyLive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Equal() {
			t.Fatalf("live verification under load found differences: %s", res.Summary())
		}
		t.Logf("verified %d rows in %s (%.0f rows/s)", res.Rows, res.Duration, float64(res.Rows)/res.Duration.Seconds())
	}
	stopLoad()
	// Damage the target behind the apply's back: a changed row, a missing
	// one, an extra one.
	var changed, missing int64
	dc := connectPinned(t, ctx, dstDSN)
	defer dc.Close(ctx)
	if err := dc.QueryRow(ctx, `SELECT min(id), max(id) FROM public.customers WHERE tenant_id = 1`).Scan(&changed, &missing); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`SET session_replication_role = replica`,
		fmt.Sprintf(`UPDATE public.customers SET name = 'corrupted' WHERE tenant_id = 1 AND id = %d`, changed),
		fmt.Sprintf(`DELETE FROM public.customers WHERE tenant_id = 1 AND id = %d`, missing),
		`INSERT INTO public.customers (tenant_id, id, email) VALUES (1, 999999999, 'extra@example.com')`} {
		if _, err := dc.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	res, err := j.VerifyLive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var cust *struct{ m, e, d []string }
	for _, tr := range res.Tables {
		if tr.Table.Name == "customers" {
			cust = &struct{ m, e, d []string }{tr.Missing, tr.Extra, tr.Different}
		} else if !tr.Equal() {
			t.Errorf("%s reported different: %+v", tr.Table, tr)
		}
	}
	want := struct{ m, e, d []string }{[]string{fmt.Sprintf("(1,%d)", missing)}, []string{"(1,999999999)"}, []string{fmt.Sprintf("(1,%d)", changed)}}
	if cust == nil || fmt.Sprint(*cust) != fmt.Sprint(want) {
		t.Fatalf("customers: got %+v, want missing %v extra %v different %v (summary: %s)", cust, want.m, want.e, want.d, res.Summary())
	}
	t.Logf("reported: %s", res.Summary())
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestFlipSQLAndNotify flips a platform's own routing table with
// --flip-sql, in the flip's transaction, and checks routers listening on
// promoted_catalog are told which tenant moved.
func TestFlipSQLAndNotify(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	mustExec(t, ctx, p.src.Owner, `CREATE TABLE routing (tenant text PRIMARY KEY, db text, schema_name text); INSERT INTO routing VALUES ('1', 'pooled', 'public')`)
	p.job.cfg.Cutover.FlipSQL = `UPDATE routing SET db = $2, schema_name = $3 WHERE tenant = $1`
	p.job.cfg.Cutover.Location = "tenant1-db"
	listen := connectPinned(t, ctx, p.srcDSN)
	defer listen.Close(ctx)
	if _, err := listen.Exec(ctx, "LISTEN promoted_catalog"); err != nil {
		t.Fatal(err)
	}
	if err := p.job.Run(ctx); err != nil {
		t.Fatalf("promote: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := listen.WaitForNotification(wctx)
	if err != nil || n.Payload != "1" {
		t.Fatalf("notification %+v (%v), want promoted_catalog with payload 1", n, err)
	}
	s := connectPinned(t, ctx, p.srcDSN)
	defer s.Close(ctx)
	var db, schema string
	var version int64
	if err := s.QueryRow(ctx, `SELECT db, schema_name, (SELECT version FROM promoted.tenant_catalog WHERE tenant_id = '1') FROM routing WHERE tenant = '1'`).Scan(&db, &schema, &version); err != nil {
		t.Fatal(err)
	}
	if db != "tenant1-db" || schema != "public" || version != 1 {
		t.Errorf("routing says %s/%s and promoted's catalog v%d; want tenant1-db/public and promoted's own entry untouched (v1)", db, schema, version)
	}
}

// TestFixReplicaIdentity gives the id-keyed events table a replica
// identity covering tenant_id only when asked, and the move then filters
// it on the server, with the same rows in the end.
func TestFixReplicaIdentity(t *testing.T) {
	ctx := context.Background()
	s, d := src.NewSaaS(t, 20, 5), dst.NewTenantDB(t)
	srcDSN, dstDSN := s.Admin, d.Admin
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: []string{"events"}, FixReplicaIdentity: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitFor(t, 60*time.Second, "catch-up", func() bool { return j.Phase() == "catchup" })
	if !j.Tables()[0].ServerFilter {
		t.Fatal("events is still filtered by promoted after --fix-replica-identity")
	}
	sc := connectPinned(t, ctx, srcDSN)
	defer sc.Close(ctx)
	var ident, filter string
	if err := sc.QueryRow(ctx, `SELECT c.relreplident::text, coalesce(pg_get_expr(pr.prqual, pr.prrelid), '')
	    FROM pg_class c JOIN pg_publication_rel pr ON pr.prrelid = c.oid WHERE c.relname = 'events'`).Scan(&ident, &filter); err != nil {
		t.Fatal(err)
	}
	if ident != "i" || !strings.Contains(filter, "tenant_id") {
		t.Fatalf("events: replica identity %q, row filter %q; want an index identity and a tenant filter", ident, filter)
	}
	// Updates and deletes of every tenant still work under the filter.
	mustExec(t, ctx, s.App, `UPDATE events SET kind = 'moved' WHERE tenant_id IN (1, 2) AND id % 3 = 0;
		DELETE FROM events WHERE tenant_id IN (1, 3) AND id % 5 = 0; UPDATE events SET tenant_id = 1 WHERE tenant_id = 2 AND id % 7 = 0`)
	end := currentLSN(t, ctx, srcDSN)
	waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
	compareTenant(t, ctx, srcDSN, dstDSN, "public", "public", "1", []string{"events"})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
