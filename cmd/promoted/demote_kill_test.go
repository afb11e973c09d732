package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/testenv"
)

// TestKillDuringDemotion kills `demote` with SIGKILL during its copy, as
// its catch-up starts, with the fence armed, and right after the flip,
// while other tenants write to the pooled tables. Then a rerun finishes
// the demotion, or cancel leaves the pooled tables without the tenant's
// demoted rows and the dedicated side authoritative (after the flip,
// cancel is refused: the pooled tables are authoritative).
func TestKillDuringDemotion(t *testing.T) {
	for _, c := range []struct{ step, then string }{
		{"copy", "demote"}, {"copy", "cancel"}, {"catchup", "demote"},
		{"arm", "cancel"}, {"flip", "demote"}, {"flip", "cancel"},
	} {
		t.Run(c.step+"_then_"+c.then, func(t *testing.T) { killDemotion(t, c.step, c.then) })
	}
}

func killDemotion(t *testing.T, step, then string) {
	ctx := context.Background()
	pooled, dedicated := src.NewSaaS(t, 60, 2), dst.NewTenantDB(t)
	if code, _, stderr := runCLI(t, "promote", "--source", pooled.Mover, "--target", dedicated.Mover, "--tenant", "2"); code != 0 {
		t.Fatalf("promote: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "cleanup", "--source", pooled.Mover, "--tenant", "2"); code != 0 {
		t.Fatalf("cleanup of the promotion: exit %d\n%s", code, stderr)
	}
	// Other tenants write to the pooled tables all along, never failing.
	stopLoad := neighbours(t, pooled, []int{1, 3}, 1, false)
	args := []string{"demote", "--source", dedicated.Mover, "--target", pooled.Mover, "--tenant", "2", "--cutover-timeout", "10s", "--chunk-rows", "50", "--parallel", "1"}
	d := startDaemon(t, []string{"PROMOTED_TEST_CRASH_AT=" + step}, args...)
	select {
	case <-d.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("demote did not reach the %s step:\n%s", step, d.out.tail())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != -1 {
		t.Fatalf("demote exited %d, want killed at %s:\n%s", code, step, d.out.tail())
	}
	location := func() string {
		return queryOne[string](t, ctx, pooled.Admin, `SELECT location FROM promoted.tenant_catalog WHERE tenant_id = '2'`)
	}
	dedicatedWrite := func() error {
		conn := connectPinned(t, ctx, dedicated.App)
		defer conn.Close(ctx)
		_, err := conn.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES (2, 'probe')`)
		return err
	}
	pooledRows := func() int64 {
		return queryOne[int64](t, ctx, pooled.Admin, `SELECT (SELECT count(*) FROM customers WHERE tenant_id = 2) + (SELECT count(*) FROM orders WHERE tenant_id = 2) +
		    (SELECT count(*) FROM order_lines WHERE tenant_id = 2) + (SELECT count(*) FROM events WHERE tenant_id = 2)`)
	}
	leftovers := func() int64 {
		return queryOne[int64](t, ctx, dedicated.Admin, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()) + (SELECT count(*) FROM pg_publication)`)
	}
	flipped := step == "flip"
	if got := location() == job.Redact(pooled.Mover); got != flipped {
		t.Fatalf("after a crash at %s the catalog says %s", step, location())
	}
	if pooledRows() == 0 {
		t.Fatalf("the crash at %s came before anything was copied: the test proves nothing", step)
	}

	switch then {
	case "demote":
		code, out, errOut := runCLI(t, args...)
		if code != 0 {
			t.Fatalf("rerun demote exited %d:\n%s\n%s", code, out, errOut)
		}
		stopLoad()
		if loc := location(); loc != job.Redact(pooled.Mover) {
			t.Errorf("the catalog sends tenant 2 to %s after the rerun, want the pooled database", loc)
		}
		s, p := connectPinned(t, ctx, dedicated.Admin), connectPinned(t, ctx, pooled.Admin)
		testenv.ComparePooledTenant(t, ctx, s, p, "public", "public", "tenant_id", "2", testenv.MovedTables)
		s.Close(ctx)
		p.Close(ctx)
		if err := dedicatedWrite(); err == nil || !strings.Contains(err.Error(), "PM001") {
			t.Errorf("after the demotion the dedicated side accepted the tenant's write (%v), want PM001", err)
		}
		if n := leftovers(); n != 0 {
			t.Errorf("%d slots or publications left on the dedicated side", n)
		}
	case "cancel":
		code, _, errOut := runCLI(t, "cancel", "--source", dedicated.Mover, "--target", pooled.Mover, "--tenant", "2")
		stopLoad()
		if flipped {
			if code != 1 || !strings.Contains(errOut, "already demoted") {
				t.Fatalf("cancel after the flip exited %d (%s), want a refusal", code, errOut)
			}
			if pooledRows() == 0 {
				t.Error("the refused cancel deleted the demoted rows")
			}
			return
		}
		if code != 0 {
			t.Fatalf("cancel exited %d: %s", code, errOut)
		}
		if n := pooledRows(); n != 0 {
			t.Errorf("%d demoted rows of tenant 2 left in the pooled tables after cancel", n)
		}
		if loc := location(); loc != job.Redact(dedicated.Mover) {
			t.Errorf("the catalog sends tenant 2 to %s after cancel, want the dedicated side", loc)
		}
		if err := dedicatedWrite(); err != nil {
			t.Errorf("after cancel the tenant cannot write on the dedicated side: %v", err)
		}
		if n := leftovers() + queryOne[int64](t, ctx, dedicated.Admin, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'promoted_fence%'`); n != 0 {
			t.Errorf("%d slots, publications or fence triggers left on the dedicated side after cancel", n)
		}
	}
}
