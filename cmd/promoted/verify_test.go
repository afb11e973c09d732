package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/promoted/promoted/job"
)

// TestVerifyAndCancelDropTarget runs `promoted verify` on a replica (equal,
// exit 0), then on a damaged one (exit 1, the key named on one line), and
// `cancel --drop-target`, which leaves neither slot nor target tables.
func TestVerifyAndCancelDropTarget(t *testing.T) {
	ctx := context.Background()
	sdb, ddb := src.NewSaaS(t, 100, 5), dst.NewTenantDB(t)
	srcDSN, dstDSN := sdb.Admin, ddb.Admin
	jobID, _ := jobNames(t, srcDSN, "public", "1")
	// A password in the DSN (trust auth ignores it) must never be printed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	d := startDaemon(t, nil, "replicate", "--source", sdb.Mover+"&password=s3cr3t-pw", "--sink", ddb.Mover+"&password=s3cr3t-pw",
		"--tenant", "1", "--metrics-addr", addr, "--log-level", "debug")
	waitCaughtUp(t, d, ctx, srcDSN, dstDSN, jobID)
	get := func(path string) string {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s %s", path, resp.Status, b)
		}
		return string(b)
	}
	metrics := get("/metrics")
	for _, m := range []string{`promoted_snapshot_rows_total{table="public.orders",tenant="1"}`, "promoted_apply_durable_lsn_bytes",
		"promoted_job_lag_bytes", `promoted_apply_changes_total{op="insert",tenant="1"}`} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	if live := get("/verify"); !strings.Contains(live, "verified") || strings.Contains(live, "DIFFERENT") {
		t.Errorf("GET /verify on the running daemon: %s", live)
	}
	d.terminate(t)
	d.out.mu.Lock()
	logs := d.out.b.String()
	d.out.mu.Unlock()
	if !strings.Contains(logs, "streaming") {
		t.Fatalf("the daemon's log was not captured:\n%s", logs)
	}
	if strings.Contains(logs, "s3cr3t") || strings.Contains(metrics, "s3cr3t") {
		t.Error("the password appeared in the logs or metrics")
	}

	code, out, errOut := runCLI(t, "verify", "--source", sdb.Mover, "--target", ddb.Mover, "--tenant", "1")
	if code != 0 || !strings.Contains(out, "verified") || strings.Contains(out, "DIFFERENT") {
		t.Fatalf("verify of an equal replica exited %d:\n%s\n%s", code, out, errOut)
	}
	mustExec(t, ctx, dstDSN, `SET session_replication_role = replica; UPDATE orders SET total = -1 WHERE tenant_id = 1 AND id = (SELECT min(id) FROM orders WHERE tenant_id = 1)`)
	key := "(1," + queryOne[string](t, ctx, dstDSN, `SELECT min(id)::text FROM orders WHERE tenant_id = 1`) + ")"
	code, _, errOut = runCLI(t, "verify", "--source", sdb.Mover, "--target", ddb.Mover, "--tenant", "1")
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	last := lines[len(lines)-1] // the lines before it are the log
	if code != 1 || !strings.HasPrefix(last, "promoted: the target differs") || !strings.Contains(last, "different "+key) {
		t.Fatalf("verify of a damaged replica exited %d, last line %q; want 1 and an error naming %s", code, last, key)
	}

	code, _, errOut = runCLI(t, "cancel", "--source", sdb.Mover, "--tenant", "1", "--drop-target", "--target", ddb.Mover)
	if code != 0 {
		t.Fatalf("cancel --drop-target exited %d: %s", code, errOut)
	}
	if n := queryOne[int64](t, ctx, dstDSN, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename IN ('customers', 'orders', 'order_lines', 'events')`); n != 0 {
		t.Errorf("%d target tables left after cancel --drop-target", n)
	}
	if s := slotsOf(t, ctx, srcDSN); len(s) != 0 {
		t.Errorf("slots left after cancel: %v", s)
	}
}

// GET /verify reads the whole tenant on both databases: it answers only
// this host's clients unless --verify-remote.
func TestVerifyOnlyFromThisHost(t *testing.T) {
	for _, tc := range []struct {
		remote string
		allow  bool
		want   int
	}{{"10.1.2.3:5555", false, http.StatusForbidden}, {"[2001:db8::1]:5555", false, http.StatusForbidden},
		{"127.0.0.1:5555", false, http.StatusServiceUnavailable}, {"[::1]:5555", false, http.StatusServiceUnavailable},
		{"10.1.2.3:5555", true, http.StatusServiceUnavailable}} {
		j, err := job.New(job.Config{SourceDSN: "postgres://127.0.0.1:1/x", TargetDSN: "postgres://127.0.0.1:1/y", Tenant: "1"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest("GET", "/verify", nil)
		r.RemoteAddr = tc.remote
		w := httptest.NewRecorder()
		verifyHandler(j, tc.allow).ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("from %s (remote allowed %v): %d, want %d (a move that is not streaming answers 503)", tc.remote, tc.allow, w.Code, tc.want)
		}
	}
}
