package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/testenv"
)

// TestStatusSaysWhatToRunNext follows one move through `promoted status`:
// running (the lease's session named, the slot's lag shown, exit 0),
// killed (stuck: exit 1 and the rerun to do), cancelled (ended, exit 0).
func TestStatusSaysWhatToRunNext(t *testing.T) {
	ctx := context.Background()
	srcDSN, dstDSN, jobID, args, stopLoad := killSetup(t)
	defer stopLoad()
	d := startDaemon(t, nil, append(args, "--progress-interval", "300ms")...)
	waitPhase(t, d, ctx, dstDSN, jobID, "catchup")
	waitFor(t, d, 10*time.Second, "the catch-up's lag recorded", func() bool { return statusJSON(t, srcDSN, 0)[0].LagSeconds != nil })
	moves := statusJSON(t, srcDSN, 0)
	if len(moves) != 1 {
		t.Fatalf("status lists %d moves, want 1: %+v", len(moves), moves)
	}
	m := moves[0]
	if m.Kind != "replicate" || m.Phase != "catchup" || m.Running == "" || m.Slot == "" || m.Stuck {
		t.Errorf("a running replica: %+v", m)
	}
	// The copy's rows, of the planner's estimate, as it recorded them.
	copied := queryOne[int64](t, ctx, dstDSN, `SELECT rows_copied FROM promoted.progress WHERE job_id = $1`, jobID)
	if m.RowsCopied == nil || *m.RowsCopied != copied || copied == 0 || m.RowsEstimated == nil || *m.RowsEstimated <= 0 {
		t.Errorf("status of a copied replica: rows %v of %v, the target records %d copied", m.RowsCopied, m.RowsEstimated, copied)
	}
	// The lag in time, as the running move measured and recorded it.
	if m.LagSeconds == nil || *m.LagSeconds < 0 || *m.LagSeconds > 60 {
		t.Errorf("status of a running replica under load: lag_seconds %v, want a measured lag", m.LagSeconds)
	}
	code, out, _ := runCLI(t, "status", "--source", srcDSN)
	if code != 0 || !strings.Contains(out, "replicate") || !strings.Contains(out, "running") {
		t.Errorf("status of a running move exited %d:\n%s", code, out)
	}

	d.kill(t)
	// d is dead: waitFor must not check that it is alive.
	waitFor(t, nil, 30*time.Second, "the lease to end with the killed session", func() bool {
		return statusJSON(t, srcDSN, -1)[0].Running == ""
	})
	time.Sleep(1500 * time.Millisecond) // the source writes on, nothing applies it
	m = statusJSON(t, srcDSN, 1)[0]
	if !m.Stuck || !strings.Contains(m.Next, "rerun the same `promoted replicate`") || m.RetainedWAL <= 0 {
		t.Errorf("a killed replica: %+v", m)
	}
	// Nothing applies the source's writes since the kill: the lag grows
	// with the time since (at least the sleep above).
	if m.LagSeconds == nil || *m.LagSeconds < 1.5 {
		t.Errorf("a killed replica under load: lag_seconds %v, want at least the 1.5 s since the kill", m.LagSeconds)
	}
	cancelJob(t, ctx, srcDSN, "public", "1")
	m = statusJSON(t, srcDSN, 0)[0]
	if m.Phase != "cancelled" || m.Stuck || m.Slot != "" {
		t.Errorf("a cancelled replica: %+v", m)
	}
}

// statusJSON runs `promoted status --json` and checks its exit status
// (-1: either).
func statusJSON(t *testing.T, srcDSN string, want int) []job.MoveStatus {
	t.Helper()
	code, out, stderr := runCLI(t, "status", "--source", srcDSN, "--json")
	if want >= 0 && code != want {
		t.Fatalf("status exited %d, want %d: %s\n%s", code, want, stderr, out)
	}
	var moves []job.MoveStatus
	if err := json.Unmarshal([]byte(out), &moves); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return moves
}

// TestVersion: --version names the module and the toolchain.
func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "promoted ") || !strings.Contains(out, "go1.") {
		t.Errorf("--version exited %d: %q", code, out)
	}
}

// TestProductionBinaryHasNoFaultHooks builds promoted as a user does and
// checks that none of the tests' fault hooks (PROMOTED_TEST_*) is in it.
func TestProductionBinaryHasNoFaultHooks(t *testing.T) {
	out := filepath.Join(t.TempDir(), "promoted")
	if b, err := exec.Command("go", "build", "-o", out, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, hook := range []string{"PROMOTED_TEST_CRASH_AT", "PROMOTED_TEST_CHUNK_DELAY"} {
		if bytes.Contains(b, []byte(hook)) {
			t.Errorf("the production binary reads %s", hook)
		}
	}
	if !bytes.Contains(b, []byte("PROMOTED_CPUPROFILE")) {
		t.Error("the check found nothing it should: the binary lacks even PROMOTED_CPUPROFILE")
	}
}

// TestSummaryJSON: promote and cleanup write their summaries as JSON for
// automation, and the numbers are the moved rows: rows copied plus the
// changes applied (no writers here: none) equal the tenant's rows, and
// cleanup reports deleting exactly them. Between them, status names
// cleanup and rollback as the ways on; after cleanup, nothing.
func TestSummaryJSON(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	dir := t.TempDir()
	var tenantRows int64
	for _, tb := range testenv.MovedTables {
		tenantRows += queryOne[int64](t, ctx, s.Admin, "SELECT count(*) FROM "+tb+" WHERE tenant_id = 1")
	}
	promoteJSON, cleanupJSON := filepath.Join(dir, "promote.json"), filepath.Join(dir, "cleanup.json")
	if code, _, stderr := runCLI(t, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "1", "--summary-json", promoteJSON); code != 0 {
		t.Fatalf("promote exited %d: %s", code, stderr)
	}
	var p struct {
		Tenant, Outcome   string
		RowsCopied        int64 `json:"rows_copied"`
		BlockedMS         int64 `json:"writes_blocked_ms"`
		CatalogVersion    int64 `json:"catalog_version"`
		VerifiedUnder     int64 `json:"verified_rows_under_fence"`
		RollbackPossible  bool  `json:"rollback_possible"`
		VerifiedBeforeRow int64 `json:"verified_rows_before_fence"`
	}
	readJSON(t, promoteJSON, &p)
	if p.Tenant != "1" || p.Outcome != "promoted" || p.RowsCopied != tenantRows || p.BlockedMS <= 0 || p.CatalogVersion != 2 || !p.RollbackPossible {
		t.Errorf("promote summary %+v; the tenant has %d rows", p, tenantRows)
	}
	// status after the flip: nothing stuck, and the two ways on named.
	if m := statusJSON(t, s.Mover, 0); len(m) != 1 || m[0].Kind != "promote" || m[0].Stuck ||
		!strings.Contains(m[0].Next, "promoted cleanup") || !strings.Contains(m[0].Next, "promoted rollback") {
		t.Errorf("status after the flip: %+v", m)
	}
	if code, _, stderr := runCLI(t, "cleanup", "--source", s.Mover, "--tenant", "1", "--summary-json", cleanupJSON); code != 0 {
		t.Fatalf("cleanup exited %d: %s", code, stderr)
	}
	var c struct {
		Deleted map[string]int64 `json:"deleted_rows"`
	}
	readJSON(t, cleanupJSON, &c)
	var deleted int64
	for _, n := range c.Deleted {
		deleted += n
	}
	if deleted != tenantRows {
		t.Errorf("cleanup summary %+v: %d rows deleted, the tenant had %d", c, deleted, tenantRows)
	}
	if m := statusJSON(t, s.Mover, 0); len(m) != 1 || m[0].Stuck || !strings.Contains(m[0].Next, "nothing: the move has ended") {
		t.Errorf("status after cleanup: %+v", m)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
}
