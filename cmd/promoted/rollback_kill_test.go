package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/testenv"
)

// TestKillDuringRollbackDrain kills `rollback` with SIGKILL once it has
// drained under its fence on the dedicated side. The tenant is fenced
// there until a rerun finishes the rollback, or cancel lets it write on
// the dedicated side again (and a later rollback still finishes, with the
// writes made in between). Every write the tenant made on the dedicated
// side ends in the pooled tables.
func TestKillDuringRollbackDrain(t *testing.T) {
	for _, then := range []string{"rollback", "cancel"} {
		t.Run(then, func(t *testing.T) { killRollback(t, then) })
	}
}

func killRollback(t *testing.T, then string) {
	ctx := context.Background()
	pooled, dedicated := src.NewSaaS(t, 40, 2), dst.NewTenantDB(t)
	code, stdout, stderr := runCLI(t, "promote", "--source", pooled.Mover, "--target", dedicated.Mover, "--tenant", "2")
	if code != 0 || !strings.Contains(stdout, "promoted rollback --source") {
		t.Fatalf("promote: exit %d, no rollback advice\n%s%s", code, stdout, stderr)
	}
	write := func(dsn, kind string) error {
		conn := connectPinned(t, ctx, dsn)
		defer conn.Close(ctx)
		for _, q := range []string{`INSERT INTO events (tenant_id, kind) VALUES (2, $1)`,
			`UPDATE customers SET name = $1 WHERE tenant_id = 2 AND id IN (SELECT id FROM customers WHERE tenant_id = 2 ORDER BY id LIMIT 3)`,
			`DELETE FROM order_lines WHERE tenant_id = 2 AND line = 3 AND $1 <> ''`} {
			if _, err := conn.Exec(ctx, q, kind); err != nil {
				return err
			}
		}
		return nil
	}
	if err := write(dedicated.App, "after the promotion"); err != nil {
		t.Fatalf("the tenant's write in the dedicated database: %v", err)
	}
	if err := write(pooled.App, "stale"); err == nil || !strings.Contains(err.Error(), "PM001") {
		t.Fatalf("a stale write to the pooled rows after the promotion: %v, want PM001", err)
	}
	args := []string{"rollback", "--source", pooled.Mover, "--target", dedicated.Mover, "--tenant", "2", "--cutover-timeout", "10s"}
	d := startDaemon(t, []string{"PROMOTED_TEST_CRASH_AT=drain"}, args...)
	select {
	case <-d.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("rollback did not reach its drain:\n%s", d.out.tail())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != -1 {
		t.Fatalf("rollback exited %d, want killed at the drain:\n%s", code, d.out.tail())
	}
	location := func() string {
		return queryOne[string](t, ctx, pooled.Admin, `SELECT location FROM promoted.tenant_catalog WHERE tenant_id = '2'`)
	}
	if loc := location(); loc != job.Redact(dedicated.Mover) {
		t.Fatalf("after the crash the catalog sends tenant 2 to %s, want the dedicated side", loc)
	}
	if err := write(dedicated.App, "fenced"); err == nil || !strings.Contains(err.Error(), "PM001") {
		t.Fatalf("after a crash at the drain the tenant's write on the dedicated side gave %v, want the fence (PM001)", err)
	}
	if then == "cancel" {
		if code, _, stderr := runCLI(t, "cancel", "--source", dedicated.Mover, "--target", pooled.Mover, "--tenant", "2"); code != 0 {
			t.Fatalf("cancel of the rollback: exit %d: %s", code, stderr)
		}
		if err := write(dedicated.App, "after the cancel"); err != nil {
			t.Fatalf("after cancel the tenant cannot write on the dedicated side: %v", err)
		}
		if loc := location(); loc != job.Redact(dedicated.Mover) {
			t.Fatalf("after cancel the catalog sends tenant 2 to %s", loc)
		}
	}
	if code, stdout, stderr := runCLI(t, args...); code != 0 || !strings.Contains(stdout, "tenant 2 rolled back") {
		t.Fatalf("rollback after the crash: exit %d\n%s%s", code, stdout, stderr)
	}
	if loc := location(); loc != job.Redact(pooled.Mover) {
		t.Errorf("after the rollback the catalog sends tenant 2 to %s, want the pooled database", loc)
	}
	s, p := connectPinned(t, ctx, dedicated.Admin), connectPinned(t, ctx, pooled.Admin)
	testenv.ComparePooledTenant(t, ctx, s, p, "public", "public", "tenant_id", "2", testenv.MovedTables)
	s.Close(ctx)
	p.Close(ctx)
	if err := write(pooled.App, "back home"); err != nil {
		t.Errorf("after the rollback the tenant cannot write its pooled rows: %v", err)
	}
	if err := write(dedicated.App, "stale"); err == nil || !strings.Contains(err.Error(), "PM001") {
		t.Errorf("after the rollback a stale write on the dedicated side gave %v, want PM001", err)
	}
	if n := queryOne[int64](t, ctx, dedicated.Admin, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Errorf("%d slots left on the dedicated side after the rollback", n)
	}
}
