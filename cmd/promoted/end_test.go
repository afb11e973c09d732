package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/promoted/promoted/testenv"
)

// promoteLP promotes tenant 1 of a fresh least-privilege pooled database
// into a second cluster with the binary, as the mover, and returns both
// databases.
func promoteLP(t *testing.T) (testenv.TenantDB, testenv.TenantDB) {
	t.Helper()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	code, _, stderr := runCLI(t, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "1")
	if code != 0 {
		t.Fatalf("promote exited %d: %s", code, stderr)
	}
	return s, d
}

// TestVerifyAfterFlipAdvisesCleanup runs verify on a move that has
// flipped: it says the source is fenced and cleanup is next, and cleanup,
// run as advised, works. (verify once advised cancel, which refuses.)
func TestVerifyAfterFlipAdvisesCleanup(t *testing.T) {
	s, d := promoteLP(t)
	code, _, stderr := runCLI(t, "verify", "--source", s.Mover, "--target", d.Mover, "--tenant", "1")
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "promoted cleanup") {
		t.Fatalf("verify after the flip: exit %d, %q; want exit 1 and one line advising cleanup", code, stderr)
	}
	code, stdout, stderr := runCLI(t, "cleanup", "--source", s.Mover, "--tenant", "1")
	if code != 0 {
		t.Fatalf("cleanup, as advised, exited %d: %s", code, stderr)
	}
	t.Logf("%s", stdout)
	if n := queryOne[int64](t, context.Background(), s.Admin, `SELECT count(*) FROM customers WHERE tenant_id = 1`); n != 0 {
		t.Errorf("%d customers of tenant 1 left after cleanup", n)
	}
}

// TestCleanupStopsOnTheServer interrupts a cleanup whose DELETE waits for
// a row lock: the DELETE must end on the server too, instead of holding
// its locks and the xmin horizon after promoted has gone.
func TestCleanupStopsOnTheServer(t *testing.T) {
	ctx := context.Background()
	s, _ := promoteLP(t)
	hold := connectPinned(t, ctx, s.Admin)
	defer hold.Close(ctx)
	if _, err := hold.Exec(ctx, `BEGIN; SELECT 1 FROM order_lines WHERE tenant_id = 1 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, nil, "cleanup", "--source", s.Mover, "--tenant", "1")
	waiting := `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'promoted'
	    AND state = 'active' AND query LIKE 'DELETE%'`
	waitFor(t, d, 60*time.Second, "cleanup's DELETE to wait for the row lock", func() bool {
		return queryOne[int64](t, ctx, s.Admin, waiting) > 0
	})
	if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatal("cleanup did not stop within 10s of SIGINT")
	}
	deadline := time.Now().Add(3 * time.Second)
	for queryOne[int64](t, ctx, s.Admin, waiting) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("cleanup's DELETE is still running on the server 3s after promoted stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	hold.Exec(ctx, "ROLLBACK")
	if code, _, stderr := runCLI(t, "cleanup", "--source", s.Mover, "--tenant", "1"); code != 0 {
		t.Fatalf("cleanup rerun exited %d: %s", code, stderr)
	}
}

// TestConcurrentVerify asks a running replica for three verifications at
// once: one runs, the others are told one is running (409), and the
// apply goes on afterwards. (Concurrent requests once panicked and left
// the apply stopped for good.)
func TestConcurrentVerify(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 200, 5)
	d := dst.NewTenantDB(t)
	addr := freeAddr(t)
	dm := startDaemon(t, nil, "replicate", "--source", s.Mover, "--sink", d.Mover, "--tenant", "1", "--metrics-addr", addr)
	jobID, names := jobNames(t, s.Admin, "public", "1")
	// Streaming, not copying: the slot's walsender is active (it can be
	// while the snapshot is exported, too) and the target records the
	// catch-up. A verification during the copy is 503 on purpose.
	waitFor(t, dm, 60*time.Second, "the replica to stream", func() bool {
		phase, _, _ := progress(ctx, d.Admin, jobID)
		return phase == "catchup" && queryOne[bool](t, ctx, s.Admin, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active)`, names.Slot)
	})
	stopLoad := startLoad(t, ctx, s.App, []int{1, 2}, 2)
	// The writers are well under way before the verifications, which now
	// take about a second: the load must not rest on their length alone.
	time.Sleep(time.Second)
	var wg sync.WaitGroup
	codes := make([]int, 3)
	bodies := make([]string, 3)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get("http://" + addr + "/verify")
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			codes[i], bodies[i] = resp.StatusCode, strings.TrimSpace(string(b))
		}()
	}
	wg.Wait()
	ok, busy := 0, 0
	for _, c := range codes {
		switch c {
		case http.StatusOK:
			ok++
		case http.StatusConflict:
			busy++
		}
	}
	if ok < 1 || ok+busy != len(codes) {
		t.Fatalf("three concurrent GET /verify answered %v (%q), want one 200 and the others 200 or 409", codes, bodies)
	}
	stopLoad()
	waitCaughtUp(t, dm, ctx, s.Admin, d.Admin, jobID)
	compareTenant(t, ctx, s.Admin, d.Admin, "public", "public", "tenant_id", "1", testenv.MovedTables)
	if strings.Contains(dm.out.tail(), "panic") {
		t.Errorf("the daemon logged a panic:\n%s", dm.out.tail())
	}
	dm.terminate(t)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestTargetRoleRefusedBeforeTheCopy gives the target a role that cannot
// set session_replication_role: the move is refused before anything is
// created on either side. (It was refused only after the whole copy.)
func TestTargetRoleRefusedBeforeTheCopy(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 20, 2)
	d := dst.NewTenantDB(t)
	mustExec(t, ctx, d.Admin, `DO $$ BEGIN CREATE ROLE weak_mover LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`)
	mustExec(t, ctx, d.Admin, fmt.Sprintf(`GRANT CREATE ON DATABASE %s TO weak_mover; GRANT CREATE ON SCHEMA public TO weak_mover`, d.Name))
	expectRefusal(t, s.Admin, d.Admin, "cannot set session_replication_role",
		"--source", s.Mover, "--sink", dst.DSN(d.Name, "weak_mover"), "--tenant", "1")
}

// TestEmptyTenantRefusedByTheCLI refuses a tenant without rows (a typo)
// with one line and nothing created.
func TestEmptyTenantRefusedByTheCLI(t *testing.T) {
	s := src.NewSaaS(t, 20, 2)
	d := dst.NewTenantDB(t)
	expectRefusal(t, s.Admin, d.Admin, "--allow-empty", "--source", s.Mover, "--sink", d.Mover, "--tenant", "999999")
}
