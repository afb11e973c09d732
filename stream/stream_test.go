package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/testenv"
)

var cluster *testenv.Cluster

func TestMain(m *testing.M) { testenv.Main(m.Run, testenv.Options{Name: "stream"}, &cluster) }

// recorder is a Sink that keeps what it is given; Flush makes it durable.
type recorder struct {
	mu      sync.Mutex
	pending []promoted.Change
	changes []promoted.Change
	pendEnd promoted.LSN
	durable atomic.Uint64
	// parts is every Txn handed over, as xid/partial/changes.
	parts []part
	// begins is each Txn's BeginLSN.
	begins []promoted.LSN
}

type part struct {
	xid     uint32
	partial bool
	changes int
}

func (r *recorder) Apply(_ context.Context, t *promoted.Txn) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.parts = append(r.parts, part{t.Xid, t.Partial, len(t.Changes)})
	r.begins = append(r.begins, t.BeginLSN)
	r.pending = append(r.pending, t.Changes...)
	if !t.Partial {
		r.pendEnd = t.EndLSN
	}
	return nil
}

func (r *recorder) Flush(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, r.pending...)
	r.pending = nil
	if r.pendEnd > promoted.LSN(r.durable.Load()) {
		r.durable.Store(uint64(r.pendEnd))
	}
	return nil
}

func (r *recorder) Durable() promoted.LSN { return promoted.LSN(r.durable.Load()) }

func (r *recorder) got() []promoted.Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]promoted.Change(nil), r.changes...)
}

// fixture is a source database with table ev, a publication and a slot.
type fixture struct {
	dsn   string
	conn  *pgx.Conn
	table *promoted.Table
	slot  promoted.LSN
	name  string
	// maxTxn is the stream's MaxTxnChanges (0: its default).
	maxTxn int
}

// setup creates ev(tenant_id, id, small, big) keyed by id alone (so the
// daemon filters it) or by (tenant_id, id) (so the server filters it).
func setup(t *testing.T, serverFilter bool) *fixture {
	t.Helper()
	ctx := context.Background()
	dsn := cluster.NewDB(t)
	slot := "slot_" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	pk, filter := "PRIMARY KEY (id)", ""
	if serverFilter {
		pk, filter = "PRIMARY KEY (tenant_id, id)", " WHERE (tenant_id = 7)"
	}
	mustExec(t, conn, `CREATE TABLE ev (tenant_id int NOT NULL, id int NOT NULL, small int, big text, `+pk+`);
		ALTER TABLE ev ALTER big SET STORAGE EXTERNAL;
		CREATE PUBLICATION pub FOR TABLE ev`+filter)
	var lsn string
	if err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, slot).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	start, _ := promoted.ParseLSN(lsn)
	tbl := &promoted.Table{Schema: "public", Name: "ev", TargetSchema: "public", TargetName: "ev",
		Columns: []promoted.Column{{Name: "tenant_id", Type: "integer", TypeOID: 23, NotNull: true},
			{Name: "id", Type: "integer", TypeOID: 23, NotNull: true}, {Name: "small", Type: "integer", TypeOID: 23},
			{Name: "big", Type: "text", TypeOID: 25}},
		PrimaryKey: []int{1}, Tenant: 0, ServerFilter: serverFilter, TenantLiteral: "7"}
	if serverFilter {
		tbl.PrimaryKey = []int{0, 1}
	}
	t.Cleanup(func() {
		conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot)
	})
	return &fixture{dsn: dsn, conn: conn, table: tbl, slot: start, name: slot}
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
}

// run streams until cond holds on the recorder (or the stream fails) and
// returns the stream's error.
func (f *fixture) run(t *testing.T, rec *recorder, until func(*recorder) bool) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, _ := pgconn.ParseConfig(f.dsn)
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range promoted.SessionParams {
		cfg.RuntimeParams[k] = v
	}
	repl, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(context.Background())
	s, err := New(Config{Slot: f.name, Publication: "pub", StatusInterval: 200 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond, MaxTxnChanges: f.maxTxn},
		repl, []*promoted.Table{f.table}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Durable() == 0 {
		rec.durable.Store(uint64(f.slot)) // a sink starts at its recorded position
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(sctx, f.slot, rec) }()
	for {
		select {
		case err := <-done:
			stop()
			return err
		case <-time.After(20 * time.Millisecond):
		}
		if until(rec) {
			stop()
			return <-done
		}
		if ctx.Err() != nil {
			stop()
			<-done
			t.Fatal("timed out waiting for the stream")
		}
	}
}

func count(n int) func(*recorder) bool {
	return func(r *recorder) bool { return len(r.got()) >= n }
}

func val(r promoted.Row, i int) string {
	switch r[i].Kind {
	case promoted.Null:
		return "NULL"
	case promoted.Unchanged:
		return "u"
	}
	return string(r[i].Data)
}

// TestDaemonFilterTransitions drives a row of a table the daemon filters
// in, within, out of and outside the tenant (docs/hazards.md 4.3).
func TestDaemonFilterTransitions(t *testing.T) {
	f := setup(t, false)
	mustExec(t, f.conn, `
		INSERT INTO ev VALUES (7, 1, 1, 'a'), (8, 2, 1, 'b');  -- one in, one out
		UPDATE ev SET small = 2 WHERE id = 1;                  -- within
		UPDATE ev SET tenant_id = 7 WHERE id = 2;              -- enters
		UPDATE ev SET tenant_id = 9 WHERE id = 1;              -- leaves
		UPDATE ev SET small = 5 WHERE id = 1;                  -- outside: a lenient no-op delete
		DELETE FROM ev WHERE id = 2;`)
	rec := &recorder{}
	if err := f.run(t, rec, count(6)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range rec.got() {
		s := c.Op.String()
		if c.Lenient {
			s += "~"
		}
		if c.New != nil {
			s += " " + val(c.New, 0) + "/" + val(c.New, 1) + "/" + val(c.New, 2)
		} else {
			s += " key " + val(c.Key, 1)
		}
		got = append(got, s)
	}
	want := []string{"insert~ 7/1/1", "update~ 7/1/2", "update~ 7/2/1", "delete~ key 1", "delete~ key 1", "delete~ key 2"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Fatalf("changes:\n got %q\nwant %q", got, want)
	}
}

// TestBeginLSNIsTheBeginMessages: a transaction's BeginLSN is where the
// walsender put its BEGIN (Debezium's transaction id carries it), before
// its first change, even when that change is another tenant's row the
// daemon filtered out.
func TestBeginLSNIsTheBeginMessages(t *testing.T) {
	f := setup(t, false)
	mustExec(t, f.conn, `BEGIN; INSERT INTO ev VALUES (8, 1, 1, 'other'); INSERT INTO ev VALUES (7, 2, 1, 'mine'); COMMIT`)
	rec := &recorder{}
	if err := f.run(t, rec, count(1)); err != nil {
		t.Fatal(err)
	}
	got := rec.got()
	if len(got) != 1 || len(rec.begins) == 0 {
		t.Fatalf("got %d changes in %d transactions, want the tenant's one", len(got), len(rec.begins))
	}
	if b := rec.begins[len(rec.begins)-1]; b == 0 || b >= got[0].LSN {
		t.Fatalf("BeginLSN %s, first change of the tenant at %s: want the BEGIN's position, before the other tenant's row", b, got[0].LSN)
	}
}

// TestServerFilterAndToast: the server filters, an update that leaves a
// TOASTed value alone sends it as unchanged, and a row entering the tenant
// arrives as an INSERT with unchanged values (docs/hazards.md 3.1, 3.2).
func TestServerFilterAndToast(t *testing.T) {
	f := setup(t, true)
	mustExec(t, f.conn, `
		INSERT INTO ev SELECT 7, 1, 1, string_agg(md5(i::text), '') FROM generate_series(1, 400) i;
		INSERT INTO ev SELECT 8, 2, 1, string_agg(md5(i::text), '') FROM generate_series(1, 400) i;
		UPDATE ev SET small = 2 WHERE id = 1;
		UPDATE ev SET tenant_id = 7 WHERE id = 2;
		UPDATE ev SET small = 3 WHERE tenant_id = 8;`)
	rec := &recorder{}
	if err := f.run(t, rec, count(3)); err != nil {
		t.Fatal(err)
	}
	got := rec.got()
	if len(got) != 3 {
		t.Fatalf("got %d changes, want 3 (tenant 8's rows must be filtered by the server)", len(got))
	}
	if got[0].Op != promoted.Insert || len(got[0].New[3].Data) != 12800 {
		t.Fatalf("first change: %s with big of %d bytes", got[0].Op, len(got[0].New[3].Data))
	}
	if got[1].Op != promoted.Update || got[1].New[3].Kind != promoted.Unchanged || val(got[1].New, 2) != "2" {
		t.Fatalf("update of small: big must be unchanged ('u'), got %s big=%s small=%s", got[1].Op, val(got[1].New, 3), val(got[1].New, 2))
	}
	if got[2].Op != promoted.Insert || got[2].New[3].Kind != promoted.Unchanged {
		t.Fatalf("row entering the tenant: want an insert with big unchanged, got %s big=%s", got[2].Op, val(got[2].New, 3))
	}
}

func TestTruncateStops(t *testing.T) {
	f := setup(t, true)
	mustExec(t, f.conn, `INSERT INTO ev VALUES (7, 1, 1, 'a'); TRUNCATE ev;`)
	rec := &recorder{}
	err := f.run(t, rec, func(*recorder) bool { return false })
	var te *ErrTruncate
	if !errors.As(err, &te) {
		t.Fatalf("want ErrTruncate, got %v", err)
	}
	if !strings.Contains(err.Error(), "public.ev") || !strings.Contains(err.Error(), "never replayed") {
		t.Fatalf("message does not name the table and the policy: %v", err)
	}
}

func TestSchemaDriftStops(t *testing.T) {
	f := setup(t, true)
	mustExec(t, f.conn, `INSERT INTO ev VALUES (7, 1, 1, 'a')`)
	mustExec(t, f.conn, `ALTER TABLE ev ADD COLUMN extra int`)
	mustExec(t, f.conn, `INSERT INTO ev VALUES (7, 2, 1, 'b', 5)`)
	rec := &recorder{}
	err := f.run(t, rec, func(*recorder) bool { return false })
	var se *ErrSchemaChanged
	if !errors.As(err, &se) || !strings.Contains(err.Error(), `column "extra" was added`) {
		t.Fatalf("want a schema change error naming the column, got %v", err)
	}
	if n := len(rec.got()); n != 1 {
		t.Fatalf("the insert before the ALTER should be applied alone, got %d changes", n)
	}
}

// TestIdleTenantAdvancesSlot: only other tenants write; the slot must still
// advance, through heartbeats the sink records (docs/hazards.md 5.3).
func TestIdleTenantAdvancesSlot(t *testing.T) {
	f := setup(t, true)
	mustExec(t, f.conn, `INSERT INTO ev SELECT 8, g, 1, 'x' FROM generate_series(1, 20000) g`)
	var target string
	if err := f.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	end, _ := promoted.ParseLSN(target)
	rec := &recorder{}
	if err := f.run(t, rec, func(r *recorder) bool { return r.Durable() >= end }); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.got()); n != 0 {
		t.Fatalf("got %d changes of other tenants", n)
	}
	var flush string
	if err := f.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, f.name).Scan(&flush); err != nil {
		t.Fatal(err)
	}
	got, _ := pglogrepl.ParseLSN(flush)
	if got < end {
		t.Fatalf("slot confirmed %s, want at least %s", got, end)
	}
	if got > rec.Durable() {
		t.Fatalf("slot confirmed %s beyond the sink's durable %s", got, rec.Durable())
	}
}

// TestSplitTransactionEndsWithItsLastPart sends transactions whose
// tenant changes are exact multiples of MaxTxnChanges: after the leading
// parts, the transaction's last part (empty here) must still follow with
// the same xid, or the sink's open group is never completed and can be
// rolled back while the stream moves on (issue: a 10,000-change
// transaction at --max-txn-changes 5000).
func TestSplitTransactionEndsWithItsLastPart(t *testing.T) {
	f := setup(t, false)
	f.maxTxn = 10
	for _, q := range []string{ // one transaction each
		`INSERT INTO ev SELECT 7, g, g, 'x' FROM generate_series(1, 20) g`,
		`INSERT INTO ev SELECT 8, g, g, 'other' FROM generate_series(100, 104) g`,
		`INSERT INTO ev SELECT 7, g, g, 'y' FROM generate_series(21, 30) g`,
		`INSERT INTO ev VALUES (7, 31, 1, 'z')`,
	} {
		mustExec(t, f.conn, q)
	}
	rec := &recorder{}
	if err := f.run(t, rec, func(r *recorder) bool { return len(r.got()) >= 31 && r.Durable() > f.slot }); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	parts := append([]part(nil), rec.parts...)
	rec.mu.Unlock()
	var open *part
	var shapes []string
	for i, p := range parts {
		if p.xid == 0 {
			continue // a heartbeat between transactions
		}
		shapes = append(shapes, fmt.Sprintf("%d:%v:%d", p.xid, p.partial, p.changes))
		if open != nil && p.xid != open.xid {
			t.Errorf("part %d is of transaction %d while transaction %d still waits for its last part", i, p.xid, open.xid)
		}
		if p.partial {
			open = &parts[i]
		} else {
			open = nil
		}
	}
	if open != nil {
		t.Errorf("transaction %d never got its last part", open.xid)
	}
	for i, p := range parts {
		if p.xid == 0 && i > 0 && parts[i-1].partial {
			t.Errorf("a heartbeat arrived inside split transaction %d", parts[i-1].xid)
		}
	}
	t.Logf("parts (xid:partial:changes): %v", shapes)
	if len(rec.got()) != 31 {
		t.Errorf("%d changes delivered, want 31", len(rec.got()))
	}
}
