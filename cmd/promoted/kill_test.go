package main

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/testenv"
)

// killSetup seeds a pooled source, starts writers on tenants 1, 2 and 3,
// and returns the DSNs, the job's id, the replicate arguments for tenant 1
// into a database on the second cluster, and the function that stops the
// writers.
//
// promoted runs as the mover and the writers as the application's role;
// srcDSN and dstDSN are the mover's too: the test's checks read only what
// the mover may read, and `status` and `cancel` run as it, as in
// production.
func killSetup(t *testing.T) (srcDSN, dstDSN, jobID string, args []string, stopLoad func()) {
	t.Helper()
	ctx := context.Background()
	s, d := src.NewSaaS(t, 200, 5), dst.NewTenantDB(t)
	srcDSN, dstDSN = s.Mover, d.Mover
	jobID, _ = jobNames(t, srcDSN, "public", "1")
	stopLoad = startLoad(t, ctx, s.App, []int{1, 2, 3}, 2)
	args = []string{"replicate", "--source", s.Mover, "--sink", d.Mover, "--tenant", "1",
		"--chunk-rows", "200", "--parallel", "2", "--apply-batch-age", "100ms"}
	return
}

// finish stops the writers, lets the daemon reach the source's position,
// stops it cleanly, and checks the target row by row and that exactly the
// job's one slot exists (a restart must not leave an orphan pinning WAL).
func finish(t *testing.T, d *daemon, srcDSN, dstDSN, jobID string, stopLoad func()) {
	t.Helper()
	ctx := context.Background()
	stopLoad()
	waitCaughtUp(t, d, ctx, srcDSN, dstDSN, jobID)
	d.terminate(t)
	compareTenant(t, ctx, srcDSN, dstDSN, "public", "public", "tenant_id", "1", testenv.MovedTables)
	_, names := jobNames(t, srcDSN, "public", "1")
	if s := slotsOf(t, ctx, srcDSN); len(s) != 1 || s[0] != names.Slot {
		t.Errorf("slots on the source: %v, want exactly [%s]", s, names.Slot)
	}
	cancelJob(t, ctx, srcDSN, "public", "1")
}

// count returns the result of a count query, or false while it fails (the
// table may not exist yet).
func count(ctx context.Context, dsn, q string) (int64, bool) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, false
	}
	defer conn.Close(ctx)
	var n int64
	return n, conn.QueryRow(ctx, q).Scan(&n) == nil
}

// TestKillDuringSnapshot: SIGKILL while the copy is under way. The
// exported snapshot dies with the process, so the restarted daemon must
// start the copy over (new slot, the half-copied rows cleared) and still
// end with exactly the tenant's rows.
func TestKillDuringSnapshot(t *testing.T) {
	ctx := context.Background()
	srcDSN, dstDSN, jobID, args, stopLoad := killSetup(t)
	d := startDaemon(t, []string{"PROMOTED_TEST_CHUNK_DELAY=200ms"}, args...)
	waitFor(t, d, 90*time.Second, "snapshot rows in the target's orders", func() bool {
		phase, _, _ := progress(ctx, dstDSN, jobID)
		n, ok := count(ctx, dstDSN, `SELECT count(*) FROM public.orders`)
		return phase == "snapshot" && ok && n > 0
	})
	d.kill(t)
	if phase, _, _ := progress(ctx, dstDSN, jobID); phase != "snapshot" {
		t.Fatalf("the target records phase %q after the kill: the kill did not land during the snapshot", phase)
	}
	d = startDaemon(t, nil, args...)
	waitPhase(t, d, ctx, dstDSN, jobID, "catchup")
	time.Sleep(2 * time.Second) // stream under load for a while
	finish(t, d, srcDSN, dstDSN, jobID, stopLoad)
}

// TestKillDuringCatchup: SIGKILL, three times at random moments, while the
// tenant's changes stream in. An ALWAYS trigger on the target's orders
// records every row the apply inserts; order ids come from a sequence and
// are never reused, so an id recorded twice is a change applied twice
// (invariant 2).
func TestKillDuringCatchup(t *testing.T) {
	ctx := context.Background()
	srcDSN, dstDSN, jobID, args, stopLoad := killSetup(t)
	d := startDaemon(t, nil, args...)
	waitPhase(t, d, ctx, dstDSN, jobID, "catchup")
	// The apply runs with session_replication_role = replica, so only an
	// ALWAYS trigger fires for it.
	// Target triggers run with the apply's role, the mover, which also
	// owns the tables it created there and so adds the trigger.
	mustExec(t, ctx, dstDSN, `CREATE TABLE public.audit (id bigint NOT NULL); GRANT INSERT ON public.audit TO `+testenv.Mover+`;
	    CREATE FUNCTION public.audit_order() RETURNS trigger LANGUAGE plpgsql AS
	      $$BEGIN INSERT INTO public.audit VALUES (NEW.id); RETURN NULL; END$$;
	    CREATE TRIGGER audit_order AFTER INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.audit_order();
	    ALTER TABLE public.orders ENABLE ALWAYS TRIGGER audit_order`)
	time.Sleep(1500 * time.Millisecond)
	for i := 0; i < 3; i++ {
		_, before, _ := progress(ctx, dstDSN, jobID)
		d.kill(t)
		d = startDaemon(t, nil, args...)
		// Wait for the restarted run to apply something, then kill it at
		// a random moment of its streaming.
		waitFor(t, d, 60*time.Second, "the restarted daemon to apply", func() bool {
			_, applied, _ := progress(ctx, dstDSN, jobID)
			return applied > before
		})
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Millisecond)
	}
	finish(t, d, srcDSN, dstDSN, jobID, stopLoad)

	conn := connectPinned(t, ctx, dstDSN)
	defer conn.Close(ctx)
	if dups := rowsOf(t, ctx, conn, `SELECT id::text FROM public.audit GROUP BY id HAVING count(*) > 1 ORDER BY id`); len(dups) > 0 {
		t.Errorf("%d orders were inserted on the target more than once, e.g. ids %v", len(dups), dups[:min(len(dups), 10)])
	}
	var audited int
	if err := conn.QueryRow(ctx, `SELECT count(DISTINCT id) FROM public.audit`).Scan(&audited); err != nil {
		t.Fatal(err)
	}
	if audited == 0 {
		t.Fatal("the audit recorded no insert: the kills proved nothing")
	}
	t.Logf("%d orders inserted by the apply across 3 kills, none twice", audited)
}
