package kafka

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/stream"
	"github.com/promoted/promoted/testenv"
)

var cluster *testenv.Cluster

func TestMain(m *testing.M) { testenv.Main(m.Run, testenv.Options{Name: "kafka"}, &cluster) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func mustExec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
}

// source is a test database with the pinned session settings, tables
// read back from its catalog, a publication and a pgoutput slot.
type srcDB struct {
	dsn    string
	conn   *pgx.Conn
	tables []*promoted.Table
	types  *Types
	slot   string
	start  promoted.LSN
}

// newSource runs ddl, then describes the named tables (tenant column
// tenant_id, tenant 7) and creates a publication and a slot for them.
func newSource(t testing.TB, ddl string, names ...string) *srcDB {
	t.Helper()
	ctx := context.Background()
	dsn := cluster.NewDB(t)
	conn, err := db.Open(ctx, db.Source, dsn, "kafka-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	mustExec(t, conn, ddl)
	s := &srcDB{dsn: dsn, conn: conn}
	for _, n := range names {
		s.tables = append(s.tables, describe(t, conn, "public", n))
	}
	if s.types, err = LoadTypes(ctx, conn, s.tables); err != nil {
		t.Fatal(err)
	}
	mustExec(t, conn, "CREATE PUBLICATION pub FOR TABLE "+strings.Join(names, ", "))
	s.slot = "slot_" + strings.ToLower(strings.NewReplacer("/", "_", "-", "_").Replace(t.Name()))
	if len(s.slot) > 60 {
		s.slot = s.slot[:60]
	}
	var lsn string
	if err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, s.slot).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	s.start, _ = promoted.ParseLSN(lsn)
	t.Cleanup(func() { conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, s.slot) })
	return s
}

// describe builds a promoted.Table from the catalog, as the planner would:
// columns with format_type, primary key in key order, replica identity.
func describe(t testing.TB, conn *pgx.Conn, schema, name string) *promoted.Table {
	t.Helper()
	ctx := context.Background()
	tbl := &promoted.Table{Schema: schema, Name: name, TargetSchema: schema, TargetName: name, TenantLiteral: "7"}
	rows, err := conn.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attnotnull, a.attgenerated <> ''
FROM pg_attribute a WHERE a.attrelid = ($1 || '.' || $2)::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, schema, name)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c promoted.Column
		if err := rows.Scan(&c.Name, &c.Type, &c.TypeOID, &c.NotNull, &c.Generated); err != nil {
			t.Fatal(err)
		}
		tbl.Columns = append(tbl.Columns, c)
	}
	rows.Close()
	var pk []string
	var ident string
	if err := conn.QueryRow(ctx, `SELECT array(SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, n)
		JOIN pg_attribute a ON a.attnum = k.attnum WHERE i.indrelid = c.oid AND i.indisprimary AND a.attrelid = c.oid ORDER BY k.n),
		c.relreplident::text FROM pg_class c WHERE c.oid = ($1 || '.' || $2)::regclass`, schema, name).Scan(&pk, &ident); err != nil {
		t.Fatal(err)
	}
	for _, k := range pk {
		tbl.PrimaryKey = append(tbl.PrimaryKey, tbl.ColumnIndex(k))
	}
	tbl.ReplicaIdentity = ident[0]
	tbl.Tenant = tbl.ColumnIndex("tenant_id")
	return tbl
}

// capture is a promoted.Sink that keeps every transaction the stream
// hands it, whole.
type capture struct {
	mu      sync.Mutex
	txns    []promoted.Txn
	changes int
	durable promoted.LSN
}

func (c *capture) Apply(_ context.Context, t *promoted.Txn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !t.Heartbeat() {
		c.txns = append(c.txns, *t)
		c.changes += len(t.Changes)
	}
	if !t.Partial && t.EndLSN > c.durable {
		c.durable = t.EndLSN
	}
	return nil
}

func (c *capture) Flush(context.Context) error { return nil }

func (c *capture) Durable() promoted.LSN {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.durable
}

// stream reads the slot with promoted's own pgoutput stream until n
// changes arrived, and returns the transactions as the stream built them.
func (s *srcDB) stream(t *testing.T, n int) []promoted.Txn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg, _ := pgconn.ParseConfig(s.dsn)
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range promoted.SessionParams {
		cfg.RuntimeParams[k] = v
	}
	repl, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(context.Background())
	st, err := stream.New(stream.Config{Slot: s.slot, Publication: "pub", StatusInterval: 200 * time.Millisecond}, repl, s.tables, quiet)
	if err != nil {
		t.Fatal(err)
	}
	c := &capture{durable: s.start}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- st.Run(sctx, s.start, c) }()
	for {
		c.mu.Lock()
		got := c.changes
		c.mu.Unlock()
		if got >= n {
			stop()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			return c.txns
		}
		select {
		case err := <-done:
			t.Fatalf("stream ended early: %v", err)
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %d changes (got %d)", n, got)
		}
	}
}

// sourceRows reads the tables' rows in text format, keyed as Fold keys
// them.
func (s *srcDB) sourceRows(t *testing.T, tbl *promoted.Table) map[string]map[string]*string {
	t.Helper()
	ctx := context.Background()
	var cols []string
	for _, c := range tbl.Columns {
		cols = append(cols, promoted.QuoteIdent(c.Name))
	}
	rows, err := s.conn.Query(ctx, "SELECT "+strings.Join(cols, ", ")+" FROM "+promoted.QuoteIdent(tbl.Name)+" WHERE "+tbl.TenantPredicate(),
		pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]map[string]*string{}
	for rows.Next() {
		raw := rows.RawValues()
		row := map[string]*string{}
		for i, c := range tbl.Columns {
			if raw[i] != nil {
				v := string(raw[i])
				row[c.Name] = &v
			} else {
				row[c.Name] = nil
			}
		}
		var pk []string
		for _, k := range tbl.PrimaryKey {
			pk = append(pk, *row[tbl.Columns[k].Name])
		}
		out[KeyText(pk)] = row
	}
	return out
}

// sameValue compares a folded value with the source's: equal text, or
// equal as values of the column's type in PostgreSQL (for what Debezium's
// format keeps only as a value: numeric scale, timetz offsets).
func (s *srcDB) sameValue(t *testing.T, typ string, a, b *string) bool {
	t.Helper()
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if *a == *b {
		return true
	}
	q := "SELECT $1::" + typ + " = $2::" + typ
	if typ == "time with time zone" {
		q = "SELECT ($1::timetz AT TIME ZONE 'UTC') = ($2::timetz AT TIME ZONE 'UTC')"
	}
	var eq bool
	if err := s.conn.QueryRow(context.Background(), q, *a, *b).Scan(&eq); err != nil {
		t.Logf("compare %s %q and %q: %v", typ, *a, *b, err)
		return false
	}
	return eq
}
