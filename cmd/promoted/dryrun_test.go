package main

import (
	"context"
	"strings"
	"testing"

	"github.com/promoted/promoted/testenv"
)

// TestDryRunCreatesNothing: promote --dry-run prints the plan (each table,
// its filter and estimate, the free slots) and that every check passed,
// exits 0, and leaves both databases exactly as they were.
func TestDryRunCreatesNothing(t *testing.T) {
	ctx := context.Background()
	s, d := src.NewSaaS(t, 60, 5), dst.NewTenantDB(t)
	srcBefore, dstBefore := catalogOf(t, ctx, s.Admin), catalogOf(t, ctx, d.Admin)
	code, out, stderr := runCLI(t, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "1", "--dry-run")
	if code != 0 {
		t.Fatalf("dry run exited %d: %s\n%s", code, stderr, out)
	}
	for _, want := range []string{"public.orders", "server row filter", "replication slot(s)", "the slot would hold back about", "every check passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("the dry run does not say %q:\n%s", want, out)
		}
	}
	if after := catalogOf(t, ctx, s.Admin); after != srcBefore {
		t.Errorf("the dry run changed the source:\nbefore:\n%s\nafter:\n%s", srcBefore, after)
	}
	if after := catalogOf(t, ctx, d.Admin); after != dstBefore {
		t.Errorf("the dry run changed the target:\nbefore:\n%s\nafter:\n%s", dstBefore, after)
	}
	if n := queryOne[int](t, ctx, s.Admin, `SELECT count(*)::int FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Errorf("%d slots after a dry run", n)
	}
}

// TestDryRunListsEveryRefusal: two independent problems (the tenant has no
// rows, and the target already holds rows of it) are both listed, and the
// dry run exits 1.
func TestDryRunListsEveryRefusal(t *testing.T) {
	ctx := context.Background()
	s, d := src.NewSaaS(t, 60, 5), dst.NewTenantDB(t)
	mustExec(t, ctx, d.Admin, `CREATE TABLE public.customers (tenant_id bigint NOT NULL, id bigint NOT NULL, email text NOT NULL, name text, PRIMARY KEY (tenant_id, id));
	    INSERT INTO public.customers VALUES (999, 1, 'x@example.com', 'x');
	    GRANT SELECT, INSERT, UPDATE, DELETE ON public.customers TO `+testenv.Mover)
	code, out, stderr := runCLI(t, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "999", "--dry-run")
	if code != 1 {
		t.Errorf("dry run with two problems exited %d, want 1: %s", code, stderr)
	}
	if n := strings.Count(out, "refused: "); n != 2 || !strings.Contains(out, "has no rows") || !strings.Contains(out, "already holds rows") {
		t.Errorf("want both refusals listed, got %d:\n%s", n, out)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "2 reason(s)") {
		t.Errorf("stderr %q: want one line counting the refusals", stderr)
	}
}

// TestDryRunWeighsTheWALBudget: while the source writes, a budget smaller
// than the WAL the slot would hold back by the end of the copy is a
// refusal, with the rate it was estimated from.
func TestDryRunWeighsTheWALBudget(t *testing.T) {
	ctx := context.Background()
	s, d := src.NewSaaS(t, 60, 5), dst.NewTenantDB(t)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		conn := connectPinned(t, ctx, s.Admin)
		defer conn.Close(ctx)
		for wctx.Err() == nil {
			conn.Exec(wctx, `INSERT INTO events (tenant_id, kind, payload) SELECT 2, 'wal', repeat('x', 500) FROM generate_series(1, 20)`)
		}
	}()
	code, out, stderr := runCLI(t, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "1", "--dry-run", "--max-retained-wal", "1B")
	if code != 1 || !strings.Contains(out, "past --max-retained-wal 1B") || !strings.Contains(out, "at the source's current WAL rate") {
		t.Errorf("dry run with a 1-byte budget under writes exited %d:\n%s\n%s", code, out, stderr)
	}
}
