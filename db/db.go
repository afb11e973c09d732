// Package db is the one place promoted opens PostgreSQL sessions. Every
// session it opens runs with the same pinned settings, so text means the
// same thing on every side (docs/hazards.md 1.9, 2.7), and a cancelled context
// sends the server a cancel request: a stopped promoted never leaves a
// DELETE or a COPY running on the server with its locks and its xmin
// horizon (docs/hazards.md 14.7).
package db

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/promoted/promoted"
)

// Side names which database a session reaches, for errors: "source",
// "target" or "catalog".
type Side string

// The sides of a move.
const (
	Source  Side = "source"
	Target  Side = "target"
	Catalog Side = "catalog"
)

// ParseDSN parses a connection string. Its error names the side and never
// repeats any of the string, which may hold a password.
func ParseDSN(side Side, dsn string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("the %s connection string cannot be parsed: check its syntax (postgres://user@host:port/database?option=value, or host=... dbname=...)", side)
	}
	return cfg, nil
}

// Config is the parsed connection string with promoted's pinned session
// settings, application_name app, and cancel requests on a cancelled
// context.
func Config(side Side, dsn, app string) (*pgx.ConnConfig, error) {
	cfg, err := ParseDSN(side, dsn)
	if err != nil {
		return nil, err
	}
	for k, v := range promoted.SessionParams {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["application_name"] = app
	cfg.BuildContextWatcherHandler = cancelRequests
	boundConnect(&cfg.Config)
	return cfg, nil
}

// ConnectTimeout bounds a connection attempt when the connection string
// sets no connect_timeout: a network that swallows packets must not hang
// a reconnect forever.
const ConnectTimeout = 15 * time.Second

func boundConnect(c *pgconn.Config) {
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = ConnectTimeout
	}
}

// cancelRequests makes a cancelled context send a CancelRequest at once,
// and close the socket a little later if the server does not answer.
// Closing the socket alone leaves the backend running its statement until
// it next writes to the client.
func cancelRequests(c *pgconn.PgConn) ctxwatch.Handler {
	return &pgconn.CancelRequestContextWatcherHandler{Conn: c, CancelRequestDelay: 0, DeadlineDelay: 2 * time.Second}
}

// Open opens a session on one side of the move.
func Open(ctx context.Context, side Side, dsn, app string) (*pgx.Conn, error) {
	cfg, err := Config(side, dsn, app)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the %s: %w", side, err)
	}
	return conn, nil
}

// OpenRaw opens a low-level session (for COPY), with the same settings as
// Open plus extra run-time parameters.
func OpenRaw(ctx context.Context, side Side, dsn, app string, extra map[string]string) (*pgconn.PgConn, error) {
	cfg, err := Config(side, dsn, app)
	if err != nil {
		return nil, err
	}
	pc := cfg.Config.Copy()
	for k, v := range extra {
		pc.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to the %s: %w", side, err)
	}
	return conn, nil
}

// OpenReplication opens a replication connection to the source. Its
// settings travel in the startup packet: any command sent after
// CREATE_REPLICATION_SLOT destroys the exported snapshot (docs/hazards.md 1.1).
// A cancelled context only ends the wait for a message: a cancel request
// would end the walsender's replication, so this connection keeps pgconn's
// deadline handling.
func OpenReplication(ctx context.Context, dsn string, extra map[string]string) (*pgconn.PgConn, error) {
	cfg, err := ParseDSN(Source, dsn)
	if err != nil {
		return nil, err
	}
	pc := cfg.Config.Copy()
	for k, v := range promoted.SessionParams {
		pc.RuntimeParams[k] = v
	}
	pc.RuntimeParams["replication"] = "database"
	pc.RuntimeParams["application_name"] = "promoted-stream"
	boundConnect(pc)
	for k, v := range extra {
		pc.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open replication connection to the source: %w", err)
	}
	return conn, nil
}

// Redact is a connection string without its password, for messages and
// the catalog's default location. A string that does not parse is not
// repeated at all.
func Redact(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "(a connection string that cannot be parsed)"
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// BeginAt begins a read-only repeatable-read transaction on conn that reads
// at the exported snapshot (SET TRANSACTION SNAPSHOT), so it sees exactly
// what the copy under that snapshot reads. With snapshot "" it reads at a
// snapshot of its own.
func BeginAt(ctx context.Context, conn *pgx.Conn, snapshot string) (pgx.Tx, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil || snapshot == "" {
		return tx, err
	}
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+promoted.QuoteLiteral(snapshot)); err != nil {
		tx.Rollback(context.Background())
		return nil, fmt.Errorf("import snapshot %s: %w", snapshot, err)
	}
	return tx, nil
}
