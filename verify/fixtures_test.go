package verify

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/testenv"
)

var cluster *testenv.Cluster

func TestMain(m *testing.M) { testenv.Main(m.Run, testenv.Options{Name: "verify"}, &cluster) }

// connect opens a session the way every caller of Compare must: with
// promoted.SessionParams; override changes some of them on purpose.
func connect(t *testing.T, dsn string, override map[string]string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range promoted.SessionParams {
		cfg.RuntimeParams[k] = v
	}
	for k, v := range override {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// execer is a *pgx.Conn or a pgx.Tx.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func mustExec(t *testing.T, q execer, sql string, args ...any) pgconn.CommandTag {
	t.Helper()
	tag, err := q.Exec(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tag
}

// The items table: the source in schema pool of one database, the target in
// schema t7 of another, with its columns in a different order and another
// name. doubled is generated, so it is left out of the checksum.
const (
	itemsSourceDDL = `CREATE SCHEMA pool;
	CREATE TABLE pool.items (tenant_id int NOT NULL, id int NOT NULL, name text, doc jsonb,
	    amount numeric(12,3), at timestamptz, blob bytea, f float8, tags text[], note text,
	    doubled int GENERATED ALWAYS AS (id * 2) STORED, PRIMARY KEY (tenant_id, id))`
	itemsTargetDDL = `CREATE SCHEMA t7;
	CREATE TABLE t7.items_moved (note text, tags text[], f float8,
	    doubled int GENERATED ALWAYS AS (id * 2) STORED, blob bytea, at timestamptz,
	    amount numeric(12,3), doc jsonb, name text, id int NOT NULL, tenant_id int NOT NULL,
	    PRIMARY KEY (tenant_id, id))`
	// fillItems makes the same rows on either side from (tenant, from, to):
	// every column is sometimes NULL; f holds -0, NaN and 0.
	fillItems = `INSERT INTO {rel} (tenant_id, id, name, doc, amount, at, blob, f, tags, note)
	SELECT $1::int, g,
	  CASE WHEN g % 11 = 0 THEN NULL ELSE 'Name ' || g || ' é ü "q", (x)' END,
	  CASE WHEN g % 13 = 0 THEN NULL ELSE jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x', NULL), 'r', g / 7.0) END,
	  CASE WHEN g % 17 = 0 THEN NULL ELSE round(g / 7.0, 3) END,
	  CASE WHEN g % 19 = 0 THEN NULL ELSE timestamptz '2024-03-10 01:59:59.123456+00' + g * interval '17 minutes 1.000001 seconds' END,
	  CASE WHEN g % 23 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
	  CASE WHEN g % 100 = 0 THEN '-0'::float8 WHEN g % 100 = 1 THEN 'NaN' WHEN g % 100 = 2 THEN 0
	       WHEN g % 29 = 0 THEN NULL ELSE g / 3.0::float8 END,
	  CASE WHEN g % 31 = 0 THEN NULL ELSE ARRAY['a' || g, NULL, 'b"c', ''] END,
	  CASE WHEN g % 5 = 0 THEN NULL ELSE 'note' END
	FROM generate_series($2::int, $3::int) AS g`
)

// itemsTable is the plan of the items table, made by hand as the schema
// package would make it.
func itemsTable() *promoted.Table {
	return &promoted.Table{Schema: "pool", Name: "items", TargetSchema: "t7", TargetName: "items_moved",
		Columns: []promoted.Column{
			{Name: "tenant_id", Type: "integer", TypeOID: 23, NotNull: true},
			{Name: "id", Type: "integer", TypeOID: 23, NotNull: true},
			{Name: "name", Type: "text", TypeOID: 25},
			{Name: "doc", Type: "jsonb", TypeOID: 3802},
			{Name: "amount", Type: "numeric(12,3)", TypeOID: 1700},
			{Name: "at", Type: "timestamp with time zone", TypeOID: 1184},
			{Name: "blob", Type: "bytea", TypeOID: 17},
			{Name: "f", Type: "double precision", TypeOID: 701},
			{Name: "tags", Type: "text[]", TypeOID: 1009},
			{Name: "note", Type: "text", TypeOID: 25},
			{Name: "doubled", Type: "integer", TypeOID: 23, Generated: true},
		},
		PrimaryKey: []int{0, 1}, Tenant: 0, ServerFilter: true, TenantLiteral: "7"}
}

// items is a source and a target holding tenant 7's items, both read
// as the mover.
type items struct {
	src, dst *pgx.Conn
	dstDSN   string
	table    *promoted.Table
}

// ownedDB is a fresh database as production has it: the tables' owner
// (the schema migrations' role) creates and fills it, and promoted's
// least-privilege mover compares it (and, in these tests, damages it,
// which its membership in the owning role allows). It returns the
// owner's session, the mover's, and the mover's DSN.
func ownedDB(t *testing.T) (owner, mover *pgx.Conn, moverDSN string) {
	t.Helper()
	db := cluster.NewTenantDB(t)
	return connect(t, db.Owner, nil), connect(t, db.Mover, nil), db.Mover
}

// newItems makes tenant 7's rows 1..rows on both sides. The source also
// holds tenants 8 and 70, the target (as a pooled target would) tenant 9
// with rows the source does not have: none of them may matter.
func newItems(t *testing.T, rows int) *items {
	t.Helper()
	srcOwner, src, _ := ownedDB(t)
	dstOwner, dst, dstDSN := ownedDB(t)
	it := &items{table: itemsTable(), src: src, dst: dst, dstDSN: dstDSN}
	mustExec(t, srcOwner, itemsSourceDDL)
	mustExec(t, dstOwner, itemsTargetDDL)
	fill(t, srcOwner, "pool.items", 7, 1, rows)
	fill(t, dstOwner, "t7.items_moved", 7, 1, rows)
	fill(t, srcOwner, "pool.items", 8, 1, rows/2)
	fill(t, srcOwner, "pool.items", 70, 1, 1000)
	fill(t, dstOwner, "t7.items_moved", 9, 1, 500)
	mustExec(t, srcOwner, "ANALYZE pool.items")
	mustExec(t, dstOwner, "ANALYZE t7.items_moved")
	return it
}

func fill(t *testing.T, q execer, rel string, tenant, from, to int) {
	t.Helper()
	mustExec(t, q, strings.ReplaceAll(fillItems, "{rel}", rel), tenant, from, to)
}

// compare runs Compare and fails the test on an error.
func compare(t *testing.T, src, dst Querier, opts Options, tables ...*promoted.Table) *Result {
	t.Helper()
	res, err := Compare(context.Background(), src, dst, tables, opts)
	if err != nil {
		t.Fatalf("compare: %v", err)
	}
	for _, tr := range res.Tables {
		t.Logf("%s: %d/%d rows, ranges %d, %s", tr.Table, tr.SourceRows, tr.TargetRows, tr.Ranges, tr.Duration)
	}
	if s := res.Summary(); s != "" {
		t.Logf("summary: %s", s)
	}
	return res
}

// wantKeys checks a reported key list, in any order.
func wantKeys(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	got, want = slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("%s keys %q, want %q", what, got, want)
	}
}

// wantDiff checks one table's reported keys exactly.
func wantDiff(t *testing.T, r TableResult, missing, extra, different []string) {
	t.Helper()
	if r.Equal() {
		t.Errorf("%s reported equal", r.Table)
	}
	wantKeys(t, "missing", r.Missing, missing...)
	wantKeys(t, "extra", r.Extra, extra...)
	wantKeys(t, "different", r.Different, different...)
	if r.Truncated {
		t.Errorf("truncated, want every key reported")
	}
}

// checksum is one side's count and checksum of the tenant's rows.
func checksum(t *testing.T, q Querier, tbl *promoted.Table, target bool) sums {
	t.Helper()
	ts := newTableSQL(tbl, nil)
	rel := ts.src
	if target {
		rel = ts.dst
	}
	sql, args := ts.sumsSQL(rel, keyRange{}, nil)
	m, err := querySums(context.Background(), q, sql, args, 1)
	if err != nil {
		t.Fatal(err)
	}
	return m[0]
}
