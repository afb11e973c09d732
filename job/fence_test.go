package job

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/testenv"
)

// runUntilCutover starts the promotion and holds it just before its
// cutover; release lets it go on, and wait returns Run's result.
func runUntilCutover(t *testing.T, p *promotion) (release func(), wait func() error) {
	t.Helper()
	hold := make(chan struct{})
	at := make(chan struct{})
	p.job.Hooks.BeforeCutover = func(ctx context.Context) {
		close(at)
		select {
		case <-hold:
		case <-ctx.Done():
		}
	}
	done := make(chan error, 1)
	go func() { done <- p.job.Run(context.Background()) }()
	select {
	case <-at:
	case err := <-done:
		t.Fatalf("promote stopped before its cutover: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("promote did not reach its cutover")
	}
	return func() { close(hold) }, func() error { return <-done }
}

// fenceTriggers counts the enabled fence triggers on the moved tables.
func fenceTriggers(t *testing.T, ctx context.Context, dsn string) int {
	t.Helper()
	var n int
	c := connectPinned(t, ctx, dsn)
	defer c.Close(ctx)
	if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'promoted\_fence%' AND tgenabled = 'A'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestEndingAnotherMoveKeepsTheFence runs two promotions of one pooled
// schema. Cancelling the second, and "cancelling" a tenant that was never
// moved, must leave the first's fence triggers in place: the first then
// flips, and a stray write to its old location is still rejected.
func TestEndingAnotherMoveKeepsTheFence(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	release, wait := runUntilCutover(t, p)
	before := fenceTriggers(t, ctx, p.srcDSN)
	if before != 4*len(movedTables) {
		t.Fatalf("%d fence triggers installed, want %d (tenant 1's three and the truncate trigger on each table)", before, 4*len(movedTables))
	}

	// A second move, of tenant 2, into another database; stopped, then
	// cancelled.
	other, err := New(Config{SourceDSN: p.src.Mover, TargetDSN: dst.NewTenantDB(t).Mover, Tenant: "2", Tables: movedTables, Promote: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	octx, stop := context.WithCancel(ctx)
	other.Hooks.BeforeCutover = func(context.Context) { stop() }
	if err := other.Run(octx); err != nil {
		t.Fatalf("second move: %v", err)
	}
	if _, err := Cancel(ctx, EndConfig{SourceDSN: p.src.Mover, Tenant: "2"}, testLogger(t)); err != nil {
		t.Fatalf("cancel tenant 2: %v", err)
	}
	_, err = Cancel(ctx, EndConfig{SourceDSN: p.src.Mover, Tenant: "5"}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "no move of tenant 5") {
		t.Fatalf("cancel of a tenant never moved: %v, want a refusal naming it", err)
	}
	if after := fenceTriggers(t, ctx, p.srcDSN); after != before {
		t.Fatalf("%d fence triggers left after ending other moves, want %d: tenant 1's move is unfenced", after, before)
	}

	release()
	if err := wait(); err != nil {
		t.Fatalf("promote: %v", err)
	}
	checkCatalogAndSource(t, ctx, p, 2)
}

// TestArmChecksTheTriggers removes one fence trigger behind the move's
// back just before the cutover: arming must refuse (a fence over a table
// it does not guard loses the writes to it), leave the tenant unfenced,
// and a rerun reinstalls the trigger and flips.
func TestArmChecksTheTriggers(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.Hooks.Cutover.BeforeArm = func() {
		mustExec(t, ctx, p.src.Owner, `DROP TRIGGER `+cutover.TenantTriggers("1")[1]+` ON events`)
	}
	err := p.job.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "missing or not enabled") || !strings.Contains(err.Error(), "rerun promote") {
		t.Fatalf("promote with a missing trigger: %v, want a refusal to arm", err)
	}
	s := connectPinned(t, ctx, p.srcDSN)
	defer s.Close(ctx)
	var fences int
	if err := s.QueryRow(ctx, `SELECT count(*) FROM promoted.fence`).Scan(&fences); err != nil {
		t.Fatal(err)
	}
	if fences != 0 {
		t.Fatalf("%d fences armed after the refusal", fences)
	}
	again, err := New(p.job.cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Run(ctx); err != nil {
		t.Fatalf("rerun: %v", err)
	}
	checkCatalogAndSource(t, ctx, p, 2)
}

// TestFlipChecksTheTriggersAgain disables one fence trigger (another
// table's than arming checks first) after the fence is armed and drained,
// in one query with the others: the check just before the flip must find
// it, refuse to flip, and leave the catalog unchanged and the tenant
// unfenced.
func TestFlipChecksTheTriggersAgain(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.Hooks.Cutover.AfterDrain = func() {
		mustExec(t, ctx, p.src.Owner, `ALTER TABLE orders DISABLE TRIGGER `+cutover.TenantTriggers("1")[2])
	}
	err := p.job.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "missing or not enabled") || !strings.Contains(err.Error(), "orders") {
		t.Fatalf("promote with a trigger disabled under the fence: %v, want a refusal to flip naming orders", err)
	}
	if v := queryOne[int64](t, ctx, p.src.Mover, `SELECT version FROM promoted.tenant_catalog WHERE tenant_id = '1'`); v != 1 {
		t.Errorf("catalog version %d after the refusal, want 1", v)
	}
	if n := queryOne[int64](t, ctx, p.src.Mover, `SELECT count(*) FROM promoted.fence WHERE armed`); n != 0 {
		t.Errorf("%d fences armed after the refusal", n)
	}
}

// TestFenceHoldsForApplicationRoles promotes tenant 1, then acts as the
// application's role on the old location: a write to tenant 1 is
// rejected with PM001 whatever the role sets, the bypass table is out of
// its reach, and other tenants write as before.
func TestFenceHoldsForApplicationRoles(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	if err := p.job.Run(ctx); err != nil {
		t.Fatalf("promote: %v", err)
	}
	app := connectPinned(t, ctx, p.src.App)
	defer app.Close(ctx)
	for _, q := range []string{
		`INSERT INTO customers (tenant_id, email) VALUES (1, 'stale@example.com')`,
		`SET promoted.bypass_fence = on; INSERT INTO customers (tenant_id, email) VALUES (1, 'bypass@example.com')`,
		`SET session_replication_role = replica`, // refused: the application role may not
		`UPDATE customers SET name = 'x' WHERE tenant_id = 1`,
		`DELETE FROM order_lines WHERE tenant_id = 1`,
		`UPDATE events SET tenant_id = 2 WHERE tenant_id = 1`,
		`TRUNCATE events`,
	} {
		_, err := app.Exec(ctx, q)
		var pgErr *pgconn.PgError
		switch {
		case strings.Contains(q, "session_replication_role"):
			if err == nil {
				t.Errorf("%s: the application role may set it", q)
			}
		case errors.As(err, &pgErr) && (pgErr.Code == "PM001" || (strings.HasPrefix(q, "TRUNCATE") && pgErr.Code == "42501")):
		default:
			t.Errorf("%s: %v, want SQLSTATE PM001", q, err)
		}
		app.Exec(ctx, "RESET ALL")
	}
	if _, err := app.Exec(ctx, `BEGIN; INSERT INTO promoted.fence_bypass VALUES (pg_current_xact_id())`); err == nil {
		t.Error("the application role can write promoted.fence_bypass")
	}
	app.Exec(ctx, "ROLLBACK")
	if _, err := app.Exec(ctx, `INSERT INTO customers (tenant_id, email) VALUES (2, 'neighbour@example.com'); UPDATE customers SET name = 'n' WHERE tenant_id = 3`); err != nil {
		t.Errorf("another tenant's write failed: %v", err)
	}
	var location string
	if err := app.QueryRow(ctx, `SELECT location FROM promoted.tenant_catalog WHERE tenant_id = '1'`).Scan(&location); err != nil {
		t.Errorf("the application role cannot read the catalog: %v", err)
	}
}

// TestFlipCommitAnswerLost loses the answer to the catalog flip's COMMIT
// (the catalog goes through a proxy that blinds the server's replies and
// then resets the connection). When a fresh session can ask, the move
// learns the flip committed and succeeds; when the catalog stays
// unreachable, the fence stays armed, the error says so, and a rerun
// settles it.
func TestFlipCommitAnswerLost(t *testing.T) {
	for _, reachable := range []bool{true, false} {
		t.Run(map[bool]string{true: "settled", false: "unknown"}[reachable], func(t *testing.T) {
			ctx := context.Background()
			p := newPromotion(t, true)
			proxy, err := src.ProxyFor()
			if err != nil {
				t.Fatal(err)
			}
			defer proxy.Close()
			p.job.cfg.Cutover.CatalogDSN = proxy.DSN(p.src.Mover)
			p.job.cfg.Cutover.SettleWait = 2 * time.Second
			p.job.Hooks.Cutover.BeforeFlipCommit = func() {
				proxy.Blind(300 * time.Millisecond)
				if !reachable {
					proxy.Refuse()
				}
			}
			err = p.job.Run(ctx)
			s := connectPinned(t, ctx, p.srcDSN)
			defer s.Close(ctx)
			var fences, version int
			if qerr := s.QueryRow(ctx, `SELECT (SELECT count(*) FROM promoted.fence), (SELECT version FROM promoted.tenant_catalog WHERE tenant_id = '1')`).Scan(&fences, &version); qerr != nil {
				t.Fatal(qerr)
			}
			if version != 2 {
				t.Fatalf("catalog version %d: the flip's COMMIT should have reached the server", version)
			}
			if fences != 1 {
				t.Fatalf("%d fences armed after a flip that committed: the tenant's stale writes would be lost", fences)
			}
			if reachable {
				if err != nil {
					t.Fatalf("promote: %v, want the flip recognised as committed", err)
				}
				checkCatalogAndSource(t, ctx, p, 2)
				return
			}
			if err == nil || !strings.Contains(err.Error(), "fence stays armed") {
				t.Fatalf("promote: %v, want an error saying the outcome is unknown and the fence stays armed", err)
			}
			t.Logf("error: %v", err)
			proxy.Heal()
			again, err := New(p.job.cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := again.Run(ctx); err != nil {
				t.Fatalf("rerun: %v", err)
			}
			if sum := again.Summary(); sum == nil || !sum.AlreadyFlipped || sum.Version != 2 {
				t.Fatalf("rerun summary %+v, want the flip recognised (version 2)", sum)
			}
			checkCatalogAndSource(t, ctx, p, 2)
		})
	}
}

// TestDriftStopsTheCutover changes a moved table's definition on the
// source while tenant 1 catches up, in ways the stream cannot see when
// the tenant does not write the table (a typmod, a collation, NOT NULL),
// or removes a table from the publication: the cutover finds it under the
// fence and refuses to flip, leaving the catalog unchanged and the tenant
// unfenced.
func TestDriftStopsTheCutover(t *testing.T) {
	for _, tc := range []struct{ name, ddl, want string }{
		{"typmod", `ALTER TABLE orders ALTER total TYPE numeric(14,2)`, "numeric(14,2)"},
		{"collation", `ALTER TABLE customers ALTER name TYPE text COLLATE "C"`, `COLLATE "C"`},
		{"not_null", `UPDATE orders SET note = 'n' WHERE note IS NULL; ALTER TABLE orders ALTER note SET NOT NULL`, "is now text NOT NULL"},
		{"publication", `ALTER PUBLICATION %s DROP TABLE events`, "publication"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			p := newPromotion(t, true)
			p.job.Hooks.BeforeCutover = func(context.Context) {
				ddl := tc.ddl
				if strings.Contains(ddl, "%s") {
					ddl = fmt.Sprintf(ddl, p.job.names.Publication)
				}
				mustExec(t, ctx, p.srcDSN, ddl)
			}
			err := p.job.Run(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "catalog unchanged") {
				t.Fatalf("promote after %s: %v, want a refusal naming the change", tc.ddl, err)
			}
			t.Logf("refusal: %v", err)
			if v := queryOne[int64](t, ctx, p.srcDSN, `SELECT version FROM promoted.tenant_catalog WHERE tenant_id = '1'`); v != 1 {
				t.Errorf("catalog version %d after the refusal, want 1", v)
			}
			if n := queryOne[int64](t, ctx, p.srcDSN, `SELECT count(*) FROM promoted.fence`); n != 0 {
				t.Errorf("%d fences armed after the refusal", n)
			}
		})
	}
}

// TestLostUpdateStopsTheFlip loses one UPDATE of tenant 1 in the sink
// after the full verification before the fence, as a broken stream
// would: the check under the fence (flat in the tenant's size) re-compares
// the rows the source recorded as written, finds the lost one, and the
// catalog does not flip.
func TestLostUpdateStopsTheFlip(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.cfg.Cutover.FenceCheck = cutover.CheckChanged
	lost := loseTheLostUpdate(p)
	// BeforeArm runs after the full verification before the fence: the
	// update lands between the two, and the sink loses it.
	updated := false
	p.job.Hooks.Cutover.BeforeArm = func() {
		if updated {
			return
		}
		updated = true
		writeLostUpdate(t, ctx, p)
	}
	err := p.job.Run(ctx)
	checkLostUpdateRefused(t, ctx, p, lost, err)
}

// loseTheLostUpdate has the sink drop the update writeLostUpdate makes, as
// a broken stream would, and reports whether it did.
func loseTheLostUpdate(p *promotion) *atomic.Bool {
	var lost atomic.Bool
	p.job.Hooks.Lose = func(c *promoted.Change) bool {
		if c.Op == promoted.Update && c.Table.Name == "customers" && strings.Contains(string(c.New[c.Table.ColumnIndex("name")].Data), "lost") {
			lost.Store(true)
			return true
		}
		return false
	}
	return &lost
}

// writeLostUpdate updates one customer of tenant 1 and waits for the
// apply to pass it.
func writeLostUpdate(t *testing.T, ctx context.Context, p *promotion) {
	mustExec(t, ctx, p.src.App, `UPDATE customers SET name = 'lost update' WHERE tenant_id = 1 AND id = (SELECT min(id) FROM customers WHERE tenant_id = 1)`)
	end := currentLSN(t, ctx, p.srcDSN)
	waitFor(t, 30*time.Second, "the apply to pass the update", func() bool { return p.job.Applied() >= end })
}

// checkLostUpdateRefused checks that the move refused to flip, and left
// the catalog and the fence as they were.
func checkLostUpdateRefused(t *testing.T, ctx context.Context, p *promotion, lost *atomic.Bool, err error) {
	t.Helper()
	if !lost.Load() {
		t.Fatal("the update was never lost: the test proves nothing")
	}
	if err == nil || !strings.Contains(err.Error(), "differs") {
		t.Fatalf("promote with a lost update: %v, want the cutover to refuse to flip", err)
	}
	t.Logf("refusal: %v", err)
	if v := queryOne[int64](t, ctx, p.srcDSN, `SELECT version FROM promoted.tenant_catalog WHERE tenant_id = '1'`); v != 1 {
		t.Errorf("catalog version %d after the refusal, want 1", v)
	}
	if n := queryOne[int64](t, ctx, p.srcDSN, `SELECT count(*) FROM promoted.fence`); n != 0 {
		t.Errorf("%d fence rows left after the refusal", n)
	}
}

// TestOtherTenantsNeverCallTheFence: while tenant 1 is moving (its fence
// triggers installed, just before its cutover), another tenant's writes
// to the same tables never call the fence function: a PL/pgSQL call and a
// probe of promoted.fence on every row cost a pooled table most of its
// insert rate. Tenant 1's own write does call it (so the count is real).
func TestOtherTenantsNeverCallTheFence(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	release, wait := runUntilCutover(t, p)
	// track_functions is the superuser's to set: the DBA sets it for the
	// application's sessions in this database, which then write as usual.
	mustExec(t, ctx, p.src.Admin, fmt.Sprintf(`ALTER ROLE %s IN DATABASE %s SET track_functions = 'pl'`,
		pgx.Identifier{testenv.App}.Sanitize(), pgx.Identifier{p.src.Name}.Sanitize()))
	calls := func(tenant int) int64 {
		c := connectPinned(t, ctx, p.src.App)
		defer c.Close(ctx)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		for _, q := range []string{
			`INSERT INTO events (tenant_id, kind) VALUES ($1, 'probe')`,
			`UPDATE events SET payload = 'probed' WHERE id = (SELECT max(id) FROM events WHERE tenant_id = $1)`,
			`DELETE FROM events WHERE id = (SELECT max(id) FROM events WHERE tenant_id = $1)`,
		} {
			if _, err := tx.Exec(ctx, q, tenant); err != nil {
				t.Fatalf("tenant %d: %s: %v", tenant, q, err)
			}
		}
		var n int64
		if err := tx.QueryRow(ctx, `SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions WHERE schemaname = 'promoted' AND funcname LIKE 'fence%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := calls(3); n != 0 {
		t.Errorf("tenant 3's insert, update and delete called the fence function %d times, want 0", n)
	}
	if n := calls(1); n != 3 {
		t.Errorf("tenant 1's insert, update and delete called the fence function %d times, want 3", n)
	}
	release()
	if err := wait(); err != nil {
		t.Fatalf("promote: %v", err)
	}
}
