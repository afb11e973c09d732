package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/promoted/promoted/testenv"
)

// counts is tenant 1's row count per SaaS table.
func counts(t *testing.T, ctx context.Context, dsn string) string {
	t.Helper()
	return queryOne[string](t, ctx, dsn, `SELECT format('customers %s orders %s order_lines %s events %s',
	    (SELECT count(*) FROM customers WHERE tenant_id = 1), (SELECT count(*) FROM orders WHERE tenant_id = 1),
	    (SELECT count(*) FROM order_lines WHERE tenant_id = 1), (SELECT count(*) FROM events WHERE tenant_id = 1))`)
}

// TestCleanupActsOnTheRecordedMove promotes two of tenant 1's tables and
// runs cleanup without naming them, as an operator would: only those
// tables lose the tenant's rows; a cleanup given another tenant column is
// refused. (Cleanup once rebuilt the move from its own flags and deleted
// rows that were never copied.)
func TestCleanupActsOnTheRecordedMove(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	if code, _, stderr := runCLI(t, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "1", "--tables", "orders,order_lines"); code != 0 {
		t.Fatalf("promote exited %d: %s", code, stderr)
	}
	before := counts(t, ctx, s.Admin)
	code, _, stderr := runCLI(t, "cleanup", "--source", s.Mover, "--tenant", "1", "--tenant-column", "customer_id")
	if code != 1 || !strings.Contains(stderr, "tenant-column") {
		t.Errorf("cleanup with another tenant column: exit %d, %q; want a refusal", code, stderr)
	}
	if code, _, stderr := runCLI(t, "cleanup", "--source", s.Mover, "--tenant", "1"); code != 0 {
		t.Fatalf("cleanup exited %d: %s", code, stderr)
	}
	after := counts(t, ctx, s.Admin)
	var c0, e0, c1, e1 int
	fmt.Sscanf(before, "customers %d orders %*d order_lines %*d events %d", &c0, &e0)
	fmt.Sscanf(after, "customers %d orders %*d order_lines %*d events %d", &c1, &e1)
	if c0 == 0 || c1 != c0 || e1 != e0 || !strings.Contains(after, "orders 0 order_lines 0") {
		t.Errorf("tenant 1 had %s before cleanup and %s after; want only orders and order_lines emptied", before, after)
	}
}

// TestCancellingAnotherTenantKeepsTheFence cancels a tenant that was never
// moved while tenant 1's promotion copies: tenant 1 still flips behind a
// fence, and a stale write to its old location fails. (Cancel once removed
// every trigger of the schema, and the flip went ahead unfenced.)
func TestCancellingAnotherTenantKeepsTheFence(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	jobID, _ := jobNames(t, s.Admin, "public", "1")
	dm := startDaemon(t, []string{"PROMOTED_TEST_CHUNK_DELAY=300ms"}, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "1", "--chunk-rows", "50")
	waitPhase(t, dm, ctx, d.Admin, jobID, "snapshot")
	code, _, stderr := runCLI(t, "cancel", "--source", s.Mover, "--tenant", "5")
	t.Logf("cancel of tenant 5: exit %d, %s", code, strings.TrimSpace(stderr))
	select {
	case <-dm.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("promote did not finish:\n%s", dm.out.tail())
	}
	if code := dm.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("promote exited %d:\n%s", code, dm.out.tail())
	}
	admin := connectPinned(t, ctx, s.Admin)
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES (1, 'stale')`); err == nil || !strings.Contains(err.Error(), "PM001") {
		t.Errorf("a stale write to tenant 1's old location: %v, want PM001", err)
	}
}

// TestTheFenceHasNoBackDoor promotes tenant 1 and writes its old location
// as the application's role: the write fails with PM001 even after setting
// promoted.bypass_fence, which any role may set; other tenants write on.
// (The fence once failed every application role's writes with "permission
// denied for schema promoted", and let any role past with the setting.)
func TestTheFenceHasNoBackDoor(t *testing.T) {
	ctx := context.Background()
	s, _ := promoteLP(t)
	app := connectPinned(t, ctx, s.App)
	defer app.Close(ctx)
	if _, err := app.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES (2, 'neighbour')`); err != nil {
		t.Errorf("another tenant's write as the application's role: %v", err)
	}
	if _, err := app.Exec(ctx, `SET promoted.bypass_fence = on; INSERT INTO events (tenant_id, kind) VALUES (1, 'past the fence')`); err == nil || !strings.Contains(err.Error(), "PM001") {
		t.Errorf("a write to tenant 1 with promoted.bypass_fence = on: %v, want PM001", err)
	}
}

// TestDropTargetKeepsTablesItFound replicates tenant 1 into a database
// that already had a customers table holding tenant 9, then cancels with
// --drop-target: the table and tenant 9's rows stay. (cancel --drop-target
// once ran DROP TABLE ... CASCADE on every planned table.)
func TestDropTargetKeepsTablesItFound(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	mustExec(t, ctx, d.Owner, `CREATE TABLE customers (tenant_id bigint NOT NULL, id bigint NOT NULL, email text NOT NULL, name text, PRIMARY KEY (tenant_id, id));
		INSERT INTO customers SELECT 9, g, 'nine-' || g, NULL FROM generate_series(1, 25) g`)
	jobID, _ := jobNames(t, s.Admin, "public", "1")
	dm := startDaemon(t, nil, "replicate", "--source", s.Mover, "--sink", d.Mover, "--tenant", "1")
	waitPhase(t, dm, ctx, d.Admin, jobID, "catchup")
	dm.terminate(t)
	if code, _, stderr := runCLI(t, "cancel", "--source", s.Mover, "--tenant", "1", "--drop-target", "--target", d.Mover); code != 0 {
		t.Fatalf("cancel --drop-target exited %d: %s", code, stderr)
	}
	if got := queryOne[string](t, ctx, d.Admin, `SELECT coalesce(string_agg(tenant_id || ':' || n, ','), '') FROM (SELECT tenant_id, count(*) n FROM customers GROUP BY 1) x`); got != "9:25" {
		t.Errorf("the customers table that was there before holds %q, want tenant 9's 25 rows only", got)
	}
}

// TestCancelThenPromote cancels a replica without dropping its target and
// then promotes the tenant into it: the promotion copies anew and flips.
// (It once looped on "run cancel".)
func TestCancelThenPromote(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	jobID, _ := jobNames(t, s.Mover, "public", "1")
	dm := startDaemon(t, nil, "replicate", "--source", s.Mover, "--sink", d.Mover, "--tenant", "1")
	waitPhase(t, dm, ctx, d.Mover, jobID, "catchup")
	dm.terminate(t)
	if code, _, stderr := runCLI(t, "cancel", "--source", s.Mover, "--tenant", "1"); code != 0 {
		t.Fatalf("cancel exited %d: %s", code, stderr)
	}
	mustExec(t, ctx, s.App, `UPDATE customers SET name = 'after cancel' WHERE tenant_id = 1`)
	if code, _, stderr := runCLI(t, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "1"); code != 0 {
		t.Fatalf("promote after cancel exited %d: %s", code, stderr)
	}
	compareTenant(t, ctx, s.Mover, d.Mover, "public", "public", "tenant_id", "1", testenv.MovedTables)
}

// TestOneTenantManySpellings replicates tenant 042, stops, and runs the
// same move as 42: it resumes the one move of tenant 42. (042 and 42 were
// once two moves of one tenant.)
func TestOneTenantManySpellings(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 20, 2)
	mustExec(t, ctx, s.Admin, `INSERT INTO tenants VALUES (42, 'forty-two');
		INSERT INTO customers (tenant_id, email) SELECT 42, 'c' || g FROM generate_series(1, 30) g`)
	d := dst.NewTenantDB(t)
	jobID, names := jobNames(t, s.Mover, "public", "42")
	for _, spelling := range []string{"042", "42"} {
		dm := startDaemon(t, nil, "replicate", "--source", s.Mover, "--sink", d.Mover, "--tenant", spelling, "--tables", "customers")
		waitFor(t, dm, 60*time.Second, "tenant "+spelling+" to stream from slot "+names.Slot, func() bool {
			return queryOne[bool](t, ctx, s.Mover, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active)`, names.Slot)
		})
		mustExec(t, ctx, s.App, `INSERT INTO customers (tenant_id, email) VALUES (42, $1)`, "by-"+spelling)
		waitCaughtUp(t, dm, ctx, s.Mover, d.Mover, jobID)
		dm.terminate(t)
	}
	compareTenant(t, ctx, s.Mover, d.Mover, "public", "public", "tenant_id", "42", []string{"customers"})
	cancelJob(t, ctx, s.Mover, "public", "0042")
}
