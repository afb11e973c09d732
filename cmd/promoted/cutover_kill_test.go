package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/promoted/promoted/testenv"
)

// TestKillDuringCutover kills `promote` with SIGKILL at each step of the
// cutover (fence armed, drained, catalog flipped), then reruns promote or
// runs cancel, and checks the system ends consistent: flipped with every
// row, or the source authoritative and unfenced (invariant 5).
func TestKillDuringCutover(t *testing.T) {
	for _, step := range []string{"arm", "drain", "flip"} {
		for _, then := range []string{"promote", "cancel"} {
			t.Run(step+"_then_"+then, func(t *testing.T) {
				killCutover(t, step, then)
			})
		}
	}
}

func killCutover(t *testing.T, step, then string) {
	ctx := context.Background()
	sdb, ddb := src.NewSaaS(t, 100, 5), dst.NewTenantDB(t)
	srcDSN, dstDSN := sdb.Admin, ddb.Admin
	// Writers on another tenant only, routed like an application (so they
	// never move rows into the moving tenant): they must never fail.
	// Tenant 1's own writes are checked directly below.
	stopLoad := neighbours(t, sdb, []int{2}, 2, true)
	args := []string{"promote", "--source", sdb.Mover, "--target", ddb.Mover, "--tenant", "1", "--cutover-timeout", "10s"}
	d := startDaemon(t, []string{"PROMOTED_TEST_CRASH_AT=" + step}, args...)
	select {
	case <-d.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("promote did not reach the %s step:\n%s", step, d.out.tail())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != -1 {
		t.Fatalf("promote exited %d, want killed at %s:\n%s", code, step, d.out.tail())
	}
	version := func() int64 {
		return queryOne[int64](t, ctx, srcDSN, `SELECT version FROM promoted.tenant_catalog WHERE tenant_id = '1'`)
	}
	tenantWrite := func() error {
		conn := connectPinned(t, ctx, sdb.App)
		defer conn.Close(ctx)
		_, err := conn.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES (1, 'probe')`)
		return err
	}
	// Right after the crash the tenant is fenced whatever the step: the
	// fence is only disarmed by a rerun or cancel, or stays for good.
	if err := tenantWrite(); err == nil || !strings.Contains(err.Error(), "PM001") {
		t.Fatalf("after a crash at %s the tenant's write gave %v, want the fence (PM001)", step, err)
	}
	wantFlipped := step == "flip"
	if v := version(); (v == 2) != wantFlipped {
		t.Fatalf("after a crash at %s the catalog is at version %d", step, v)
	}

	switch then {
	case "promote":
		code, out, errOut := runCLI(t, args...)
		if code != 0 {
			t.Fatalf("rerun promote exited %d:\n%s\n%s", code, out, errOut)
		}
		t.Logf("rerun: %s", strings.TrimSpace(out))
		stopLoad()
		if v := version(); v != 2 {
			t.Errorf("catalog version %d after the rerun, want 2", v)
		}
		if n := queryOne[int64](t, ctx, srcDSN, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
			t.Errorf("%d slots left after the promotion finished", n)
		}
		compareTenant(t, ctx, srcDSN, dstDSN, "public", "public", "tenant_id", "1", testenv.MovedTables)
		if err := tenantWrite(); err == nil || !strings.Contains(err.Error(), "PM001") {
			t.Errorf("after the flip the old location accepted the tenant's write (%v), want PM001", err)
		}
	case "cancel":
		code, _, errOut := runCLI(t, "cancel", "--source", sdb.Mover, "--tenant", "1")
		stopLoad()
		if wantFlipped {
			if code != 1 || !strings.Contains(errOut, "already promoted") {
				t.Fatalf("cancel after the flip exited %d (%s), want a refusal", code, errOut)
			}
			if v := version(); v != 2 {
				t.Errorf("catalog version %d, want 2", v)
			}
			// The flipped move is finished by cleanup instead: the old rows
			// go, in batches, and so do the slot, publication and fence.
			code, out, errOut := runCLI(t, "cleanup", "--source", sdb.Mover, "--tenant", "1", "--batch-rows", "100")
			if code != 0 {
				t.Fatalf("cleanup exited %d: %s", code, errOut)
			}
			t.Logf("cleanup: %s", strings.TrimSpace(out))
			if n := queryOne[int64](t, ctx, srcDSN, `SELECT (SELECT count(*) FROM customers WHERE tenant_id = 1) + (SELECT count(*) FROM orders WHERE tenant_id = 1) +
			    (SELECT count(*) FROM order_lines WHERE tenant_id = 1) + (SELECT count(*) FROM events WHERE tenant_id = 1)`); n != 0 {
				t.Errorf("%d rows of tenant 1 left on the source after cleanup", n)
			}
			if n := queryOne[int64](t, ctx, srcDSN, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()) + (SELECT count(*) FROM pg_publication) +
			    (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'promoted_fence%') + (SELECT count(*) FROM promoted.fence)`); n != 0 {
				t.Errorf("%d slots, publications, fence triggers or fences left after cleanup", n)
			}
			if n := queryOne[int64](t, ctx, dstDSN, `SELECT count(*) FROM orders WHERE tenant_id = 1`); n == 0 {
				t.Error("the target lost the tenant's rows")
			}
			return
		}
		if code != 0 {
			t.Fatalf("cancel exited %d: %s", code, errOut)
		}
		if v := version(); v != 1 {
			t.Errorf("catalog version %d after cancel, want 1 (source authoritative)", v)
		}
		if err := tenantWrite(); err != nil {
			t.Errorf("after cancel the tenant cannot write to the source: %v", err)
		}
		if n := queryOne[int64](t, ctx, srcDSN, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()) + (SELECT count(*) FROM pg_publication) +
		    (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'promoted_fence%')`); n != 0 {
			t.Errorf("%d slots, publications or fence triggers left after cancel", n)
		}
	}
}

// neighbours starts writers on other tenants of the pooled database,
// routed like an application (so they never move rows into the moving
// tenant), and returns the function that stops them and fails the test
// if any write failed (or, with notFenced, met a fence). The writers are
// stopped at the end of the test if the test did not.
func neighbours(t *testing.T, db testenv.TenantDB, tenants []int, perTenant int, notFenced bool) func() {
	t.Helper()
	router := &testenv.Router{CatalogDSN: db.App, Default: db.App, DSN: func(string) string { return db.App }}
	stopWriters, err := testenv.LoadRouted(context.Background(), db.App, tenants, perTenant, router)
	if err != nil {
		router.Close()
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		for _, w := range stopWriters() {
			if w.Errs.Load() > 0 || (notFenced && w.Fenced.Load() > 0) {
				t.Errorf("writer on tenant %d: %d errors, %d fenced, last: %v", w.Tenant, w.Errs.Load(), w.Fenced.Load(), w.Last.Load())
			}
		}
		router.Close()
	}
	t.Cleanup(stop)
	return stop
}
