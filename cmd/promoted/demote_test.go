package main

import (
	"context"
	"strings"
	"testing"

	"github.com/promoted/promoted/testenv"
)

// TestDemoteByTheCLI takes a promoted tenant back into the pooled tables
// with the commands a user runs: a collision is refused in one line with
// exit 1, then demote finishes and prints its summary, cancel and cleanup
// ask for the pooled database, and cleanup drops the dedicated tables
// only when told to.
func TestDemoteByTheCLI(t *testing.T) {
	ctx := context.Background()
	pooled, dedicated := src.NewSaaS(t, 30, 2), dst.NewTenantDB(t)
	if code, _, stderr := runCLI(t, "promote", "--source", pooled.Mover, "--target", dedicated.Mover, "--tenant", "2"); code != 0 {
		t.Fatalf("promote: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "cleanup", "--source", pooled.Mover, "--tenant", "2"); code != 0 {
		t.Fatalf("cleanup of the promotion: exit %d\n%s", code, stderr)
	}
	demote := []string{"demote", "--source", dedicated.Mover, "--target", pooled.Mover, "--tenant", "2"}

	first := queryOne[int64](t, ctx, dedicated.Admin, `SELECT min(id) FROM events WHERE tenant_id = 2`)
	mustExec(t, ctx, pooled.Admin, `INSERT INTO events (id, tenant_id, kind) VALUES ($1, 4, 'clash')`, first)
	code, stdout, stderr := runCLI(t, demote...)
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "already holds (id)=(") || stdout != "" {
		t.Fatalf("demote onto another tenant's id: exit %d, stderr %q, stdout %q; want exit 1 and one line naming the key", code, stderr, stdout)
	}
	if queryOne[bool](t, ctx, dedicated.Admin, `SELECT to_regclass('promoted.jobs') IS NOT NULL OR EXISTS (SELECT 1 FROM pg_replication_slots)`) {
		t.Error("the refused demotion left state or a slot on the dedicated side")
	}
	mustExec(t, ctx, pooled.Admin, `DELETE FROM events WHERE id = $1 AND tenant_id = 4`, first)

	code, stdout, stderr = runCLI(t, demote...)
	if code != 0 || !strings.Contains(stdout, "tenant 2 demoted") || !strings.Contains(stdout, "writes blocked") {
		t.Fatalf("demote: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	s, d := connectPinned(t, ctx, dedicated.Admin), connectPinned(t, ctx, pooled.Admin)
	testenv.ComparePooledTenant(t, ctx, s, d, "public", "public", "tenant_id", "2", testenv.MovedTables)
	s.Close(ctx)
	d.Close(ctx)

	if code, _, stderr := runCLI(t, "cleanup", "--source", dedicated.Mover, "--tenant", "2", "--drop-source-tables"); code != 1 || !strings.Contains(stderr, "pass that database as --target") {
		t.Errorf("cleanup of a demotion without --target: exit %d, %s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "cleanup", "--source", dedicated.Mover, "--target", pooled.Mover, "--tenant", "2"); code != 1 || !strings.Contains(stderr, "--drop-source-tables") {
		t.Errorf("cleanup of a demotion without --drop-source-tables: exit %d, %s", code, stderr)
	}
	if code, stdout, stderr := runCLI(t, "cleanup", "--source", dedicated.Mover, "--target", pooled.Mover, "--tenant", "2", "--drop-source-tables"); code != 0 || !strings.Contains(stdout, "dedicated tables dropped") {
		t.Fatalf("cleanup --drop-source-tables: exit %d\n%s%s", code, stdout, stderr)
	}
	if n := queryOne[int64](t, ctx, dedicated.Admin, `SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'`); n != 0 {
		t.Errorf("%d dedicated tables left after cleanup --drop-source-tables", n)
	}
}
