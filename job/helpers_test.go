package job

import (
	"context"
	"fmt"
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
	for _, table := range tables {
		q := func(schema string) string {
			return fmt.Sprintf(`SELECT x::text FROM %s x WHERE tenant_id = $1 ORDER BY 1`, pgx.Identifier{schema, table}.Sanitize())
		}
		a := rowsOf(t, ctx, s, q(srcSchema), tenant)
		b := rowsOf(t, ctx, d, q(dstSchema), tenant)
		if len(a) != len(b) {
			t.Errorf("%s: source has %d rows of tenant %s, target %d", table, len(a), tenant, len(b))
		}
		diffs := 0
		for i := 0; i < len(a) || i < len(b); i++ {
			var x, y string
			if i < len(a) {
				x = a[i]
			}
			if i < len(b) {
				y = b[i]
			}
			if x != y {
				diffs++
				if diffs <= 3 {
					t.Errorf("%s row %d differs:\nsource %.300s\ntarget %.300s", table, i, x, y)
				}
			}
		}
		var others int
		if err := d.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s WHERE tenant_id <> $1`, pgx.Identifier{dstSchema, table}.Sanitize()), tenant).Scan(&others); err != nil {
			t.Fatal(err)
		}
		if others != 0 {
			t.Errorf("%s: target holds %d rows of other tenants", table, others)
		}
		if len(a) == 0 {
			t.Errorf("%s: no rows of tenant %s on the source: the test proves nothing", table, tenant)
		}
	}
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

func seed(t testing.TB, ctx context.Context, dsn string, scale int) {
	t.Helper()
	if err := testenv.SeedSaaS(ctx, dsn, scale/5, 5); err != nil {
		t.Fatal(err)
	}
}

func load(t testing.TB, ctx context.Context, dsn string, tenants []int, perTenant int) func() []*testenv.Writer {
	t.Helper()
	stop, err := testenv.Load(ctx, dsn, tenants, perTenant)
	if err != nil {
		t.Fatal(err)
	}
	return stop
}
