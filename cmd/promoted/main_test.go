package main

// End-to-end tests of the built binary: they run `promoted` as an operator
// would, against real PostgreSQL 15 clusters, and judge it by its exit
// status, its stderr and what it left on both databases.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/testenv"
)

// src holds the pooled databases; dst the dedicated ones, on a second
// cluster, as in production.
var src, dst *testenv.Cluster

// bin is the promoted binary built once for the package.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "promoted-cli-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "promoted")
	// The fault hooks (PROMOTED_TEST_*) exist only in this build.
	build := exec.Command("go", "build", "-tags", "promotedtest", "-o", bin, ".")
	if other := os.Getenv("PROMOTED_TEST_BIN"); other != "" {
		// Run the tests against another build (an older commit, to see a
		// new test fail there).
		bin, build = other, exec.Command("true")
	}
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build promoted: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	testenv.Main(func() int {
		defer os.RemoveAll(dir)
		return m.Run()
	}, testenv.Options{Name: "cli"}, &src, &dst)
}

// env is the environment the binary runs with: ours without PROMOTED_*
// variables, which would silently fill flags, plus extra.
func env(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PROMOTED_") {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// runCLI runs the binary to completion and returns its exit status, stdout
// and stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run promoted %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// lockedBuffer collects a running daemon's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if os.Getenv("PROMOTED_TEST_LOG") != "" {
		os.Stderr.Write(p)
	}
	return l.b.Write(p)
}

// tail is the end of the output, for failure messages.
func (l *lockedBuffer) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	if len(s) > 3000 {
		s = "..." + s[len(s)-3000:]
	}
	return s
}

// daemon is a running `promoted replicate`.
type daemon struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

// startDaemon starts the binary; t.Cleanup kills it if the test leaves it
// running (a failed test must not leave a walsender holding the slot).
func startDaemon(t *testing.T, extraEnv []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(bin, args...), out: &lockedBuffer{}, done: make(chan struct{})}
	d.cmd.Env = env(extraEnv...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		if !d.exited() {
			d.cmd.Process.Kill()
			<-d.done
		}
	})
	return d
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// alive fails the test if the daemon has exited on its own.
func (d *daemon) alive(t *testing.T) {
	t.Helper()
	if d.exited() {
		t.Fatalf("promoted exited early (%v):\n%s", d.cmd.ProcessState, d.out.tail())
	}
}

// kill is SIGKILL: no deferred function, no final commit, no goodbye to
// the walsender.
func (d *daemon) kill(t *testing.T) {
	t.Helper()
	d.alive(t)
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.done
}

// terminate sends SIGTERM and expects a clean exit 0 within 30 seconds.
func (d *daemon) terminate(t *testing.T) {
	t.Helper()
	d.alive(t)
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("promoted did not stop within 30s of SIGTERM:\n%s", d.out.tail())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("promoted exited %d after SIGTERM, want 0:\n%s", code, d.out.tail())
	}
}

// waitFor polls cond until it holds; it fails early if the daemon (when
// given) dies meanwhile.
func waitFor(t *testing.T, d *daemon, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if d != nil {
			d.alive(t)
		}
		if time.Now().After(deadline) {
			msg := ""
			if d != nil {
				msg = "\n" + d.out.tail()
			}
			t.Fatalf("timed out after %s waiting for %s%s", timeout, what, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustExec(t *testing.T, ctx context.Context, dsn string, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
}

// queryOne returns the single value of q.
func queryOne[T any](t *testing.T, ctx context.Context, dsn, q string, args ...any) T {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v T
	if err := conn.QueryRow(ctx, q, args...).Scan(&v); err != nil {
		t.Fatalf("%v\n%s", err, q)
	}
	return v
}

func dbName(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

// jobNames are the job id and the slot/publication names the binary uses
// for a tenant of a schema of the source database.
func jobNames(t *testing.T, srcDSN, schema, tenant string) (string, snapshot.Names) {
	t.Helper()
	id := job.JobID(dbName(t, srcDSN), schema, tenant)
	return id, snapshot.NamesFor(id)
}

// progress reads the job's row of promoted.progress on the target; ok is
// false while there is none.
func progress(ctx context.Context, dstDSN, jobID string) (phase string, applied promoted.LSN, ok bool) {
	conn, err := pgx.Connect(ctx, dstDSN)
	if err != nil {
		return "", 0, false
	}
	defer conn.Close(ctx)
	var lsn string
	err = conn.QueryRow(ctx, `SELECT phase, coalesce(applied_lsn, '0/0')::text FROM promoted.progress WHERE job_id = $1`, jobID).Scan(&phase, &lsn)
	if err != nil {
		return "", 0, false
	}
	applied, err = promoted.ParseLSN(lsn)
	return phase, applied, err == nil
}

func waitPhase(t *testing.T, d *daemon, ctx context.Context, dstDSN, jobID, want string) {
	t.Helper()
	waitFor(t, d, 90*time.Second, "phase "+want, func() bool {
		phase, _, _ := progress(ctx, dstDSN, jobID)
		return phase == want
	})
}

// waitCaughtUp waits until the target's recorded applied LSN reaches the
// source's current WAL position, taken now (after the last write).
func waitCaughtUp(t *testing.T, d *daemon, ctx context.Context, srcDSN, dstDSN, jobID string) {
	t.Helper()
	end, err := currentLSN(ctx, srcDSN) // demo.go's
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, 90*time.Second, "the target to reach "+end.String(), func() bool {
		phase, applied, _ := progress(ctx, dstDSN, jobID)
		return phase == "catchup" && applied >= end
	})
}

// slotsOf lists the replication slots of the source database.
func slotsOf(t *testing.T, ctx context.Context, srcDSN string) []string {
	t.Helper()
	return queryOne[[]string](t, ctx, srcDSN, `SELECT coalesce(array_agg(slot_name::text ORDER BY slot_name), '{}') FROM pg_replication_slots WHERE database = current_database()`)
}

// cancelJob runs `promoted cancel` and checks it dropped slot and
// publication, so no slot pins the shared cluster's WAL after the test.
func cancelJob(t *testing.T, ctx context.Context, srcDSN, schema, tenant string) {
	t.Helper()
	code, _, stderr := runCLI(t, "cancel", "--source", srcDSN, "--schema", schema, "--tenant", tenant)
	if code != 0 {
		t.Fatalf("promoted cancel exited %d: %s", code, stderr)
	}
	if s := slotsOf(t, ctx, srcDSN); len(s) != 0 {
		t.Errorf("slots left after cancel: %v", s)
	}
	if n := queryOne[int](t, ctx, srcDSN, `SELECT count(*)::int FROM pg_publication`); n != 0 {
		t.Errorf("%d publications left after cancel", n)
	}
}

func connectPinned(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	return testenv.Pinned(t, ctx, dsn)
}

func rowsOf(t *testing.T, ctx context.Context, conn *pgx.Conn, q string, args ...any) []string {
	t.Helper()
	return testenv.TextRows(t, ctx, conn, q, args...)
}

// compareTenant compares the tenant's rows of both databases row by row.
func compareTenant(t *testing.T, ctx context.Context, srcDSN, dstDSN, srcSchema, dstSchema, column, tenant string, tables []string) {
	t.Helper()
	s := connectPinned(t, ctx, srcDSN)
	defer s.Close(ctx)
	d := connectPinned(t, ctx, dstDSN)
	defer d.Close(ctx)
	testenv.CompareTenant(t, ctx, s, d, srcSchema, dstSchema, column, tenant, tables)
}

// startLoad starts writers and returns a function that stops them and
// fails the test if any write failed or too few were acknowledged.
func startLoad(t *testing.T, ctx context.Context, dsn string, tenants []int, perTenant int) func() {
	t.Helper()
	stop, err := testenv.Load(ctx, dsn, tenants, perTenant)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	return func() {
		t.Helper()
		stopped = true
		var acks int64
		for _, w := range stop() {
			acks += w.Acks.Load()
			if w.Errs.Load() > 0 {
				t.Errorf("writer on tenant %d saw %d errors, last: %v", w.Tenant, w.Errs.Load(), w.Last.Load())
			}
		}
		if acks < 100 {
			t.Fatalf("only %d writes acknowledged: the load proves nothing", acks)
		}
		t.Logf("%d writes acknowledged", acks)
	}
}
