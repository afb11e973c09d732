package job

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/testenv"
)

// auditSQL records, on every pooled table, which session changed which
// tenant's row. It is ENABLE ALWAYS, so it fires for promoted's sessions
// too (they run with session_replication_role = replica).
const auditSQL = `
CREATE TABLE audit (tbl text, old_tenant bigint, new_tenant bigint, who text);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO audit VALUES (TG_TABLE_NAME,
        CASE WHEN TG_OP <> 'INSERT' THEN OLD.tenant_id END,
        CASE WHEN TG_OP <> 'DELETE' THEN NEW.tenant_id END, session_user);
    RETURN NULL;
END $$;
DO $$ DECLARE t text; BEGIN
    FOREACH t IN ARRAY ARRAY['customers', 'orders', 'order_lines', 'events'] LOOP
        EXECUTE format('CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION audit_row()', t);
        EXECUTE format('ALTER TABLE %I ENABLE ALWAYS TRIGGER audit', t);
    END LOOP;
END $$`

// promotedAway promotes tenant out of a fresh pooled SaaS database into a
// fresh dedicated one and cleans up its pooled rows: the starting point of
// a demotion.
func promotedAway(t *testing.T, ctx context.Context, tenant string) (pooled, dedicated testenv.TenantDB) {
	t.Helper()
	pooled = src.NewSaaS(t, 40, 2)
	dedicated = dst.NewTenantDB(t)
	j, err := New(Config{SourceDSN: pooled.Mover, TargetDSN: dedicated.Mover, Tenant: tenant, Tables: movedTables, Promote: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Run(ctx); err != nil {
		t.Fatalf("promote: %v", err)
	}
	if _, err := Cleanup(ctx, EndConfig{SourceDSN: pooled.Mover, Tenant: tenant}, testLogger(t)); err != nil {
		t.Fatalf("cleanup of the promotion: %v", err)
	}
	return pooled, dedicated
}

// TestDemoteUnderLoad demotes a promoted tenant back into the pooled
// tables while every other tenant writes there and the tenant writes on
// its dedicated side until the fence. The tenant's rows are compared one
// by one, an audit trigger proves promoted's sessions touched no other
// tenant's row, no other tenant's write failed or waited a second, the
// catalog points to the pooled tables, and the dedicated side is fenced.
func TestDemoteUnderLoad(t *testing.T) {
	ctx := context.Background()
	pooled, dedicated := promotedAway(t, ctx, "2")
	mustExec(t, ctx, pooled.Owner, auditSQL)
	pooledLoc, dedicatedLoc := Redact(pooled.Mover), Redact(dedicated.Mover)
	// The tenant's writer follows the catalog to the dedicated side, and
	// is never let back: fenced there after the flip, it writes nothing
	// more, so the two sides can be compared row by row at the end.
	router := &testenv.Router{CatalogDSN: pooled.App, Default: pooled.App, DSN: func(loc string) string {
		if loc == dedicatedLoc || loc == pooledLoc {
			return dedicated.App
		}
		return pooled.App
	}}
	defer router.Close()
	stopTenant, err := testenv.LoadRouted(ctx, pooled.App, []int{2}, 1, router)
	if err != nil {
		t.Fatal(err)
	}
	// The other tenants' writers are routed too, so they never move a row
	// into tenant 2 (which lives elsewhere).
	stopOthers, err := testenv.LoadRouted(ctx, pooled.App, []int{1, 3, 4, 5}, 1, router)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	j, err := New(Config{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "2", Tables: movedTables, Demote: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	// A second of live catch-up before the cutover, while both sides write.
	j.Hooks.BeforeCutover = func(context.Context) { time.Sleep(time.Second) }
	runErr := j.Run(ctx)
	time.Sleep(200 * time.Millisecond) // the tenant's writer meets the fence
	tenantWriters := stopTenant()
	others := stopOthers()
	if runErr != nil {
		t.Fatalf("demote: %v", runErr)
	}
	for _, w := range others {
		if w.Errs.Load() > 0 {
			t.Errorf("tenant %d's writes failed during the demotion: %v", w.Tenant, w.Last.Load())
		}
		if d := time.Duration(w.Slowest.Load()); d > time.Second {
			t.Errorf("a write of tenant %d waited %s during the demotion", w.Tenant, d)
		}
		if w.Acks.Load() == 0 {
			t.Errorf("tenant %d wrote nothing during the demotion", w.Tenant)
		}
	}
	tw := tenantWriters[0]
	if tw.Errs.Load() > 0 {
		t.Fatalf("the tenant's writer failed: %v", tw.Last.Load())
	}
	if tw.Acks.Load() == 0 || tw.Fenced.Load() == 0 {
		t.Fatalf("the tenant's writer wrote %d times and was fenced %d times: the demotion was not under the tenant's load", tw.Acks.Load(), tw.Fenced.Load())
	}
	comparePooled(t, ctx, dedicated.Admin, pooled.Admin, "2")
	for _, email := range tw.Ledger() {
		if n := queryOne[int64](t, ctx, pooled.Admin, `SELECT count(*) FROM customers WHERE tenant_id = 2 AND email = $1`, email); n != 1 {
			t.Errorf("acknowledged customer %s of tenant 2 is in the pooled tables %d times", email, n)
		}
	}
	if bad := rowsOf(t, ctx, connectPinned(t, ctx, pooled.Admin), `SELECT format('%s %s->%s', tbl, old_tenant, new_tenant) FROM audit
	     WHERE who = $1 AND (coalesce(old_tenant, 2) <> 2 OR coalesce(new_tenant, 2) <> 2) LIMIT 5`, testenv.Mover); len(bad) > 0 {
		t.Errorf("promoted's sessions changed other tenants' rows: %v", bad)
	}
	if n := queryOne[int64](t, ctx, pooled.Admin, `SELECT count(*) FROM audit WHERE who = $1`, testenv.Mover); n == 0 {
		t.Errorf("the audit saw no change by promoted: the audit does not watch the demotion")
	}
	loc := queryOne[string](t, ctx, pooled.Admin, `SELECT location FROM promoted.tenant_catalog WHERE tenant_id = '2'`)
	if loc != pooledLoc {
		t.Errorf("the catalog sends tenant 2 to %s, want the pooled database %s", loc, pooledLoc)
	}
	app := connectPinned(t, ctx, dedicated.App)
	defer app.Close(ctx)
	_, err = app.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES (2, 'stale')`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != state.FenceSQLState {
		t.Errorf("a write to the dedicated side after the demotion: %v, want SQLSTATE %s", err, state.FenceSQLState)
	}
	if n := queryOne[int64](t, ctx, dedicated.Admin, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Errorf("%d replication slots left on the dedicated side after the demotion", n)
	}
	// Ids from the pooled sequences, for the tenant and for others, do not
	// collide with the tenant's demoted rows.
	pc := connectPinned(t, ctx, pooled.App)
	defer pc.Close(ctx)
	for _, tenant := range []int{2, 3} {
		for range 3 {
			if _, err := pc.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES ($1, 'after')`, tenant); err != nil {
				t.Fatalf("insert with a default id into the pooled events after the demotion: %v", err)
			}
		}
	}
}

// TestDemoteRefusals: a key another tenant holds in a table keyed by (id)
// alone, the tenant missing from the pooled tenants table, the tenant's
// rows already pooled. Each is one line, before anything is created on
// either side.
func TestDemoteRefusals(t *testing.T) {
	ctx := context.Background()
	pooled, dedicated := promotedAway(t, ctx, "2")
	snapshotOf := func() string {
		return fmt.Sprint(
			rowsOf(t, ctx, connectPinned(t, ctx, dedicated.Admin), `SELECT 'slot ' || slot_name FROM pg_replication_slots UNION ALL SELECT 'pub ' || pubname FROM pg_publication
			    UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal UNION ALL SELECT 'rel ' || relname FROM pg_class WHERE relnamespace = to_regnamespace('promoted') ORDER BY 1`),
			rowsOf(t, ctx, connectPinned(t, ctx, pooled.Admin), `SELECT 'catalog ' || tenant_id || ' ' || version FROM promoted.tenant_catalog
			    UNION ALL SELECT 'rel ' || relname FROM pg_class WHERE relnamespace = to_regnamespace('promoted') ORDER BY 1`),
			queryOne[int64](t, ctx, pooled.Admin, `SELECT count(*) FROM events WHERE tenant_id = 2`))
	}
	demote := func() error {
		j, err := New(Config{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "2", Tables: movedTables, Demote: true}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		return j.Run(ctx)
	}
	for _, c := range []struct{ name, want string }{
		{"id taken by another tenant", `already holds (id)=(`},
		{"tenant missing from tenants", `point to "public"."tenants" (id)=(2), which the pooled database lacks`},
		{"tenant already pooled", `already holds rows of tenant 2`},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			switch c.name {
			case "id taken by another tenant":
				// Another tenant takes the dedicated side's first id.
				first := queryOne[int64](t, ctx, dedicated.Admin, `SELECT min(id) FROM events WHERE tenant_id = 2`)
				mustExec(t, ctx, pooled.Admin, `INSERT INTO events (id, tenant_id, kind) VALUES ($1, 3, 'clash')`, first)
				defer mustExec(t, ctx, pooled.Admin, `DELETE FROM events WHERE id = $1`, first)
			case "tenant missing from tenants":
				mustExec(t, ctx, pooled.Admin, `DELETE FROM tenants WHERE id = 2`)
				defer mustExec(t, ctx, pooled.Admin, `INSERT INTO tenants VALUES (2, 'tenant 2')`)
			case "tenant already pooled":
				mustExec(t, ctx, pooled.Admin, `INSERT INTO events (tenant_id, kind) VALUES (2, 'already')`)
				defer mustExec(t, ctx, pooled.Admin, `DELETE FROM events WHERE tenant_id = 2`)
			}
			before := snapshotOf()
			err := demote()
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("demote: %v, want one line containing %q", err, c.want)
			}
			if after := snapshotOf(); after != before {
				t.Errorf("the refused demotion changed the databases:\n%s\n%s", before, after)
			}
		})
	}
	if err := demote(); err != nil {
		t.Fatalf("demote once the refusals are fixed: %v", err)
	}
	comparePooled(t, ctx, dedicated.Admin, pooled.Admin, "2")
}

// comparePooled compares the tenant's rows on the dedicated side with its
// rows in the pooled tables, row by row.
func comparePooled(t *testing.T, ctx context.Context, dedicatedDSN, pooledDSN, tenant string) {
	t.Helper()
	s := connectPinned(t, ctx, dedicatedDSN)
	defer s.Close(ctx)
	d := connectPinned(t, ctx, pooledDSN)
	defer d.Close(ctx)
	testenv.ComparePooledTenant(t, ctx, s, d, "public", "public", "tenant_id", tenant, movedTables)
}

// TestCancelAndCleanupOfADemotion: a demotion stopped during its catch-up
// and cancelled leaves the pooled tables without the tenant's rows (and
// every other tenant's rows as they were) and the dedicated side
// writable; run again, it finishes. Cleanup keeps the dedicated tables
// unless told to drop them.
func TestCancelAndCleanupOfADemotion(t *testing.T) {
	ctx := context.Background()
	pooled, dedicated := promotedAway(t, ctx, "2")
	others := func() []string {
		return rowsOf(t, ctx, connectPinned(t, ctx, pooled.Admin), `SELECT tableoid::regclass::text || ' ' || count(*) || ' ' || sum(hashtext(r)) FROM (
		    SELECT tableoid, tenant_id, c::text AS r FROM customers c UNION ALL SELECT tableoid, tenant_id, o::text FROM orders o
		    UNION ALL SELECT tableoid, tenant_id, l::text FROM order_lines l UNION ALL SELECT tableoid, tenant_id, e::text FROM events e) x
		  WHERE tenant_id <> 2 GROUP BY tableoid ORDER BY 1`)
	}
	before := others()
	rctx, stop := context.WithCancel(ctx)
	j, err := New(Config{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "2", Tables: movedTables, Demote: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	j.Hooks.Streaming = stop
	if err := j.Run(rctx); err != nil {
		t.Fatalf("demote stopped in its catch-up: %v", err)
	}
	if n := queryOne[int64](t, ctx, pooled.Admin, `SELECT count(*) FROM customers WHERE tenant_id = 2`); n == 0 {
		t.Fatal("the stopped demotion copied nothing: the cancel proves nothing")
	}
	if _, err := Cancel(ctx, EndConfig{SourceDSN: dedicated.Mover, Tenant: "2"}, testLogger(t)); err == nil || !strings.Contains(err.Error(), "pass that database as --target") {
		t.Fatalf("cancel of a demotion without --target: %v, want a refusal asking for it", err)
	}
	if _, err := Cancel(ctx, EndConfig{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "2"}, testLogger(t)); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	for _, tbl := range movedTables {
		if n := queryOne[int64](t, ctx, pooled.Admin, `SELECT count(*) FROM `+tbl+` WHERE tenant_id = 2`); n != 0 {
			t.Errorf("%s keeps %d demoted rows of tenant 2 after the cancel", tbl, n)
		}
	}
	if after := others(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the cancel changed other tenants' rows: %v before, %v after", before, after)
	}
	mustExec(t, ctx, dedicated.App, `INSERT INTO events (tenant_id, kind) VALUES (2, 'after the cancel')`)

	j, err = New(Config{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "2", Tables: movedTables, Demote: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Run(ctx); err != nil {
		t.Fatalf("demote after the cancel: %v", err)
	}
	comparePooled(t, ctx, dedicated.Admin, pooled.Admin, "2")
	if _, err := Cleanup(ctx, EndConfig{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "2"}, testLogger(t)); err == nil || !strings.Contains(err.Error(), "--drop-source-tables") {
		t.Fatalf("cleanup of a demotion without --drop-source-tables: %v, want a refusal naming the flag", err)
	}
	if n := queryOne[int64](t, ctx, dedicated.Admin, `SELECT count(*) FROM events`); n == 0 {
		t.Fatal("the refused cleanup emptied the dedicated events")
	}
	if _, err := Cleanup(ctx, EndConfig{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "2", DropSourceTables: true}, testLogger(t)); err != nil {
		t.Fatalf("cleanup --drop-source-tables: %v", err)
	}
	if left := rowsOf(t, ctx, connectPinned(t, ctx, dedicated.Admin), `SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'`); len(left) != 0 {
		t.Errorf("dedicated tables left after cleanup --drop-source-tables: %v", left)
	}
	if after := others(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the demotion changed other tenants' rows: %v before, %v after", before, after)
	}
}
