package job

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/testenv"
)

var src, dst *testenv.Cluster

func TestMain(m *testing.M) { testenv.Main(m.Run, testenv.Options{Name: "job"}, &src, &dst) }

func mustExec(t testing.TB, ctx context.Context, dsn string, sql string, args ...any) {
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

// compareTenant checks, table by table and row by row, that the target
// holds exactly the tenant's source rows, and no other tenant's.
func compareTenant(t testing.TB, ctx context.Context, srcDSN, dstDSN, srcSchema, dstSchema string, tenant string, tables []string) {
	t.Helper()
	s := connectPinned(t, ctx, srcDSN)
	defer s.Close(ctx)
	d := connectPinned(t, ctx, dstDSN)
	defer d.Close(ctx)
	compareTenantConns(t, ctx, s, d, srcSchema, dstSchema, tenant, tables)
}

// compareTenantConns is compareTenant over open sessions (one may be a
// transaction holding an older snapshot).
func compareTenantConns(t testing.TB, ctx context.Context, s, d *pgx.Conn, srcSchema, dstSchema string, tenant string, tables []string) {
	t.Helper()
	testenv.CompareTenant(t, ctx, s, d, srcSchema, dstSchema, "tenant_id", tenant, tables)
}

func connectPinned(t testing.TB, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	return testenv.Pinned(t, ctx, dsn)
}

func rowsOf(t testing.TB, ctx context.Context, conn *pgx.Conn, q string, args ...any) []string {
	t.Helper()
	return testenv.TextRows(t, ctx, conn, q, args...)
}

func currentLSN(t testing.TB, ctx context.Context, dsn string) promoted.LSN {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	l, err := promoted.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("PROMOTED_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var movedTables = testenv.MovedTables

func tableList() string { return strings.Join(movedTables, ",") }

func load(t testing.TB, ctx context.Context, dsn string, tenants []int, perTenant int) func() []*testenv.Writer {
	t.Helper()
	stop, err := testenv.Load(ctx, dsn, tenants, perTenant)
	if err != nil {
		t.Fatal(err)
	}
	return stop
}

// waitCatchup waits until the job streams, failing with its error if it
// stops first.
func waitCatchup(t testing.TB, j *Job, done chan error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for j.Phase() != "catchup" {
		select {
		case err := <-done:
			t.Fatalf("the move stopped before its catch-up: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("timed out after 1m waiting for the catch-up")
		}
	}
}

// queryOne returns the single value of q.
func queryOne[T any](t testing.TB, ctx context.Context, dsn, q string, args ...any) T {
	t.Helper()
	c := connectPinned(t, ctx, dsn)
	defer c.Close(ctx)
	var v T
	if err := c.QueryRow(ctx, q, args...).Scan(&v); err != nil {
		t.Fatalf("%v\n%s", err, q)
	}
	return v
}
