package apply

import (
	"context"
	cryptomd5 "crypto/md5"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/testenv"
)

var cluster *testenv.Cluster

func TestMain(m *testing.M) { testenv.Main(m.Run, testenv.Options{Name: "apply"}, &cluster) }

var evTable = &promoted.Table{Schema: "src", Name: "ev", TargetSchema: "public", TargetName: "ev",
	Columns: []promoted.Column{{Name: "tenant_id", Type: "integer", TypeOID: 23, NotNull: true},
		{Name: "id", Type: "integer", TypeOID: 23, NotNull: true}, {Name: "small", Type: "integer", TypeOID: 23},
		{Name: "big", Type: "text", TypeOID: 25}, {Name: "doubled", Type: "integer", TypeOID: 23, Generated: true}},
	PrimaryKey: []int{0, 1}, Tenant: 0, ServerFilter: true, TenantLiteral: "7"}

type env struct {
	dsn  string
	conn *pgx.Conn
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dsn := cluster.NewDB(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, `CREATE TABLE ev (tenant_id int NOT NULL, id int NOT NULL, small int, big text,
	    doubled int GENERATED ALWAYS AS (small * 2) STORED, PRIMARY KEY (tenant_id, id));
	    CREATE SCHEMA src; CREATE TABLE src.ev (LIKE ev INCLUDING ALL);`); err != nil {
		t.Fatal(err)
	}
	if err := state.WriteProgress(ctx, conn, &state.Progress{JobID: "j", Tenant: "7", SourceSchema: "src", TargetSchema: "public",
		Slot: "s", Publication: "p", Phase: state.ProgressCatchup, Applied: 100}); err != nil {
		t.Fatal(err)
	}
	return &env{dsn: dsn, conn: conn}
}

func (e *env) sink(t *testing.T, fetch promoted.RowFetcher) *Postgres {
	t.Helper()
	ctx := context.Background()
	conn, err := Connect(ctx, e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	p, err := state.ReadProgress(ctx, e.conn, "j")
	if err != nil || p == nil {
		t.Fatalf("progress: %v %v", p, err)
	}
	s := NewPostgres(Config{}, conn, "j", p.Applied, fetch, "7", slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func text(s string) promoted.Value { return promoted.Value{Kind: promoted.Text, Data: []byte(s)} }

var (
	null      = promoted.Value{Kind: promoted.Null}
	unchanged = promoted.Value{Kind: promoted.Unchanged}
)

func row(tenant, id, small string, big promoted.Value) promoted.Row {
	s := text(small)
	if small == "" {
		s = null
	}
	return promoted.Row{text(tenant), text(id), s, big, unchanged}
}

func ins(r promoted.Row) promoted.Change {
	return promoted.Change{Op: promoted.Insert, Table: evTable, New: r}
}

func upd(r promoted.Row) promoted.Change {
	return promoted.Change{Op: promoted.Update, Table: evTable, Key: r, New: r}
}

func applyAll(t *testing.T, s *Postgres, txns ...*promoted.Txn) error {
	t.Helper()
	ctx := context.Background()
	for _, txn := range txns {
		if err := s.Apply(ctx, txn); err != nil {
			return err
		}
	}
	return s.Flush(ctx)
}

func (e *env) rows(t *testing.T) string {
	t.Helper()
	rows, err := e.conn.Query(context.Background(), `SELECT tenant_id || '/' || id || '/' || coalesce(small::text, 'NULL') || '/' || coalesce(md5(big), 'NULL') || '/' || coalesce(doubled::text, 'NULL') FROM ev ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, " ")
}

func TestExactlyOnceAcrossRestart(t *testing.T) {
	e := newEnv(t)
	s := e.sink(t, nil)
	t1 := &promoted.Txn{Xid: 1, FinalLSN: 150, EndLSN: 200, Changes: []promoted.Change{ins(row("7", "1", "1", text("a")))}}
	if err := applyAll(t, s, t1); err != nil {
		t.Fatal(err)
	}
	if s.Durable() != 200 {
		t.Fatalf("durable %s, want 0/C8", s.Durable())
	}
	// A restart: the stream re-sends t1 (not acknowledged yet), then t2.
	s2 := e.sink(t, nil)
	if s2.Durable() != 200 {
		t.Fatalf("restarted sink starts at %s, want 0/C8", s2.Durable())
	}
	t2 := &promoted.Txn{Xid: 2, FinalLSN: 250, EndLSN: 300, Changes: []promoted.Change{ins(row("7", "2", "1", text("b")))}}
	if err := applyAll(t, s2, t1, t2); err != nil {
		t.Fatalf("re-sent transaction was applied twice: %v", err)
	}
	if got, want := e.rows(t), "7/1/1/"+md5("a")+"/2 7/2/1/"+md5("b")+"/2"; got != want {
		t.Fatalf("rows %s, want %s", got, want)
	}
	var applied string
	e.conn.QueryRow(context.Background(), `SELECT applied_lsn::text FROM promoted.progress WHERE job_id = 'j'`).Scan(&applied)
	if applied != "0/12C" {
		t.Fatalf("applied_lsn %s, want 0/12C", applied)
	}
}

func md5(s string) string {
	sum := cryptomd5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestUnchangedToastIsKept(t *testing.T) {
	e := newEnv(t)
	s := e.sink(t, nil)
	big := strings.Repeat("x", 20000)
	err := applyAll(t, s,
		&promoted.Txn{Xid: 1, FinalLSN: 150, EndLSN: 200, Changes: []promoted.Change{ins(row("7", "1", "1", text(big)))}},
		&promoted.Txn{Xid: 2, FinalLSN: 250, EndLSN: 300, Changes: []promoted.Change{upd(row("7", "1", "5", unchanged))}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.rows(t), "7/1/5/"+md5(big)+"/10"; got != want {
		t.Fatalf("rows %s, want %s (the unchanged value must survive)", got, want)
	}
}

func TestMissingRowIsFatal(t *testing.T) {
	e := newEnv(t)
	s := e.sink(t, nil)
	err := applyAll(t, s, &promoted.Txn{Xid: 1, FinalLSN: 150, EndLSN: 200, Changes: []promoted.Change{upd(row("7", "9", "1", text("a")))}})
	var d *ErrDiverged
	if !errors.As(err, &d) || !strings.Contains(err.Error(), "(tenant_id, id)=(7, 9)") {
		t.Fatalf("want divergence naming the key, got %v", err)
	}
	var applied string
	e.conn.QueryRow(context.Background(), `SELECT applied_lsn::text FROM promoted.progress WHERE job_id = 'j'`).Scan(&applied)
	if applied != "0/64" {
		t.Fatalf("applied_lsn moved to %s after a failed transaction", applied)
	}
}

func TestLenientChanges(t *testing.T) {
	e := newEnv(t)
	s := e.sink(t, nil)
	lenient := func(c promoted.Change) promoted.Change { c.Lenient = true; return c }
	del := promoted.Change{Op: promoted.Delete, Table: evTable, Key: row("7", "1", "", unchanged), Lenient: true}
	err := applyAll(t, s, &promoted.Txn{Xid: 1, FinalLSN: 150, EndLSN: 200, Changes: []promoted.Change{
		lenient(upd(row("7", "1", "1", text("a")))), // entered the tenant: inserted
		lenient(upd(row("7", "1", "2", text("b")))), // then updated
		del, del, // left it, then a no-op
		lenient(upd(row("7", "2", "3", text("c")))),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.rows(t), "7/2/3/"+md5("c")+"/6"; got != want {
		t.Fatalf("rows %s, want %s", got, want)
	}
}

// srcFetcher reads the row from the test's own source table.
type srcFetcher struct{ conn *pgx.Conn }

func (f srcFetcher) FetchRow(ctx context.Context, t *promoted.Table, key promoted.Row, _ uint32) (promoted.Row, bool, error) {
	var small *string
	var big string
	err := f.conn.QueryRow(ctx, `SELECT small::text, big FROM src.ev WHERE tenant_id = 7 AND id = $1::int`, string(key[1].Data)).Scan(&small, &big)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	r := row("7", string(key[1].Data), "", text(big))
	if small != nil {
		r[2] = text(*small)
	}
	return r, true, nil
}

func TestInsertWithUnchangedValuesIsRefetched(t *testing.T) {
	e := newEnv(t)
	big := strings.Repeat("y", 30000)
	if _, err := e.conn.Exec(context.Background(), `INSERT INTO src.ev (tenant_id, id, small, big) VALUES (7, 1, 4, $1)`, big); err != nil {
		t.Fatal(err)
	}
	s := e.sink(t, srcFetcher{e.conn})
	gone := ins(row("7", "2", "1", unchanged))
	err := applyAll(t, s, &promoted.Txn{Xid: 1, FinalLSN: 150, EndLSN: 200, Changes: []promoted.Change{
		ins(row("7", "1", "4", unchanged)),
		gone, // no longer on the source: skipped...
		{Op: promoted.Delete, Table: evTable, Key: row("7", "2", "", unchanged)}, // ...so its delete finds nothing, rightly
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.rows(t), "7/1/4/"+md5(big)+"/8"; got != want {
		t.Fatalf("rows %s, want %s (never NULL for an unchanged value)", got, want)
	}
}
