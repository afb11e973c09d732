package testenv

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// Pinned opens a session with promoted's pinned settings, so rows printed
// as text compare equal across databases exactly when their values do;
// the test closes it.
func Pinned(t TB, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := PinnedConn(ctx, dsn)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return conn
}

// PinnedConn is Pinned for callers outside tests (the demo, benchmarks).
func PinnedConn(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	for k, v := range promoted.SessionParams {
		cfg.RuntimeParams[k] = v
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// TextRows runs q and returns its single text column.
func TextRows(t TB, ctx context.Context, conn *pgx.Conn, q string, args ...any) []string {
	t.Helper()
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, q)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}
