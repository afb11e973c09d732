package job

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/promoted/promoted/apply/kafka"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/testenv"
)

// startReplica runs a replica of tenant 1 into target until the returned
// stop is called, which returns the job's error.
func startReplica(t *testing.T, cfg Config) (*Job, func() error) {
	t.Helper()
	j, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- j.Run(ctx) }()
	waitCatchup(t, j, done)
	return j, func() error {
		cancel()
		return <-done
	}
}

// catchUp waits until the job has applied everything the source wrote.
func catchUp(t *testing.T, ctx context.Context, j *Job, dsn string) {
	t.Helper()
	end := currentLSN(t, ctx, dsn)
	waitFor(t, 60*time.Second, "the replica to reach "+end.String(), func() bool { return j.Applied() >= end })
}

// TestReplicaFollowsAddAndDropColumn changes the source's tables under a
// running replica, and while it is stopped: a column added without a
// default and filled by updates, one added with a constant default (the
// rows that existed hold it without any change saying so), one dropped.
// Writers keep writing tenants 1-3 throughout. The target must end equal
// to the source row by row, every column included, and must have
// followed the changes without a new copy.
func TestReplicaFollowsAddAndDropColumn(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 60, 5)
	d := dst.NewTenantDB(t)
	stopLoad := load(t, ctx, s.App, []int{1, 2, 3}, 2)
	defer stopLoad()
	cfg := Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", TargetSchema: "public", Tables: movedTables}
	j, stop := startReplica(t, cfg)
	mustExec(t, ctx, s.Admin, `ALTER TABLE customers ADD COLUMN tier text`)
	mustExec(t, ctx, s.Admin, `UPDATE customers SET tier = 'gold' WHERE id % 2 = 0`)
	catchUp(t, ctx, j, s.Admin)
	if err := stop(); err != nil {
		t.Fatalf("the replica stopped with %v after ADD COLUMN", err)
	}
	// While no replica runs: a constant default, a dropped column.
	mustExec(t, ctx, s.Admin, `ALTER TABLE orders ADD COLUMN score int NOT NULL DEFAULT 7`)
	mustExec(t, ctx, s.Admin, `UPDATE orders SET score = 9 WHERE id % 3 = 0`)
	mustExec(t, ctx, s.Admin, `ALTER TABLE orders DROP COLUMN blob`)
	j, stop = startReplica(t, cfg)
	mustExec(t, ctx, s.Admin, `ALTER TABLE customers DROP COLUMN tier`)
	mustExec(t, ctx, s.Admin, `ALTER TABLE order_lines ADD COLUMN discount numeric(5,2) DEFAULT 0.5`)
	mustExec(t, ctx, s.Admin, `UPDATE order_lines SET discount = 0.25 WHERE line = 1`)
	time.Sleep(time.Second)
	for _, w := range stopLoad() {
		if w.Errs.Load() > 0 {
			t.Errorf("writer on tenant %d saw %d errors, last: %v", w.Tenant, w.Errs.Load(), w.Last.Load())
		}
	}
	catchUp(t, ctx, j, s.Admin)
	if err := stop(); err != nil {
		t.Fatalf("the replica stopped with %v", err)
	}
	compareTenant(t, ctx, s.Admin, d.Admin, "public", "public", "1", movedTables)
	cols := strings.Join(rowsOf(t, ctx, connectPinned(t, ctx, d.Admin), `SELECT attrelid::regclass::text || '.' || attname FROM pg_attribute
	    WHERE attrelid IN ('customers'::regclass, 'orders'::regclass, 'order_lines'::regclass) AND attnum > 0 AND NOT attisdropped
	      AND attname IN ('tier', 'score', 'blob', 'discount') ORDER BY 1`), " ")
	if cols != "order_lines.discount orders.score" {
		t.Errorf("target columns added and dropped: %q, want order_lines.discount orders.score", cols)
	}
}

// TestReplicaRefusesAnotherSchemaChange: a changed type is not followed;
// the replica stops with one clear line and applies nothing after it.
func TestReplicaRefusesAnotherSchemaChange(t *testing.T) {
	ctx := context.Background()
	j, s, d := smallReplica(t)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(rctx) }()
	waitCatchup(t, j, done)
	mustExec(t, ctx, s.Admin, `ALTER TABLE customers ALTER COLUMN name TYPE varchar(200)`)
	mustExec(t, ctx, s.Admin, `UPDATE customers SET name = 'changed' WHERE tenant_id = 1`)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), `column "name" changed type`) {
			t.Fatalf("the replica ended with %v, want a refusal naming the changed column", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the replica went on after a column changed type")
	}
	if n := queryOne[int64](t, ctx, d.Admin, `SELECT count(*) FROM customers WHERE name = 'changed'`); n != 0 {
		t.Fatalf("%d rows of the change after the refused DDL reached the target", n)
	}
}

// TestKafkaReplicaFollowsAddAndDropColumn: the records carry the new
// schema from the next change on. Every tenant row of the changed tables
// is touched after the change, so folding the topics with the tables'
// new definitions must give the source's rows exactly.
func TestKafkaReplicaFollowsAddAndDropColumn(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 30, 3)
	k, err := testenv.StartKafka(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	stopLoad := load(t, ctx, s.App, []int{1, 2}, 1)
	defer stopLoad()
	kcfg := kafka.Config{Tombstones: true}
	j, stop := startReplica(t, Config{SourceDSN: s.Mover, TargetDSN: "kafka://" + k.Addr() + "/pm", Tenant: "1", Tables: movedTables, Kafka: kcfg})
	mustExec(t, ctx, s.Admin, `ALTER TABLE customers ADD COLUMN tier text, ADD COLUMN since date`)
	mustExec(t, ctx, s.Admin, `UPDATE customers SET tier = 'gold', since = '2026-01-02' WHERE tenant_id = 1`)
	mustExec(t, ctx, s.Admin, `ALTER TABLE orders DROP COLUMN blob`)
	mustExec(t, ctx, s.Admin, `UPDATE orders SET note = coalesce(note, '') || '.' WHERE tenant_id = 1`)
	time.Sleep(500 * time.Millisecond)
	stopLoad()
	catchUp(t, ctx, j, s.Admin)
	if err := stop(); err != nil {
		t.Fatalf("the replica stopped with %v", err)
	}
	conn := connectPinned(t, ctx, s.Admin)
	defer conn.Close(ctx)
	plan, err := schema.Load(ctx, conn, schema.Config{Schema: "public", TargetSchema: "public", TenantColumn: "tenant_id", Tables: movedTables, Tenant: "1"})
	if err != nil {
		t.Fatal(err)
	}
	types, err := kafka.LoadTypes(ctx, conn, plan.Tables)
	if err != nil {
		t.Fatal(err)
	}
	kcfg.Brokers, kcfg.Prefix = []string{k.Addr()}, "pm"
	folded, err := kafka.Fold(ctx, kcfg, plan.Tables, types)
	if err != nil {
		t.Fatal(err)
	}
	var tier int
	for _, row := range folded["public.customers"] {
		if v := row["tier"]; v != nil && *v == "gold" {
			tier++
		}
	}
	if tier == 0 {
		t.Fatal("no record of customers carries the added column")
	}
	diffs, err := kafka.Compare(ctx, conn, plan.Tables, folded, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Error(d)
	}
}

// TestColumnChangedBeforeTheSnapshot: a column added (and filled) after
// the plan was read but before the slot's snapshot would be missing from
// the copy, while the stream, starting after it, never carries the
// values rows took in between. The move compares the definitions under
// the snapshot and refuses, before copying anything.
func TestColumnChangedBeforeTheSnapshot(t *testing.T) {
	ctx := context.Background()
	j, s, d := smallReplica(t)
	j.Hooks.BeforeSlot = func() {
		mustExec(t, ctx, s.Admin, `ALTER TABLE customers ADD COLUMN tier text`)
		mustExec(t, ctx, s.Admin, `UPDATE customers SET tier = 'gold' WHERE tenant_id = 1`)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := j.Run(rctx)
	if err == nil || !strings.Contains(err.Error(), "changed on the source") || !strings.Contains(err.Error(), "tier") {
		t.Fatalf("a column added between the plan and the snapshot: %v, want a refusal naming it", err)
	}
	if n := queryOne[int64](t, ctx, d.Admin, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'customers'`); n == 1 {
		if rows := queryOne[int64](t, ctx, d.Admin, `SELECT count(*) FROM public.customers`); rows != 0 {
			t.Fatalf("%d customers copied although the move was refused", rows)
		}
	}
}

// smallReplica makes, without running it, a replica of tenant 1 of a
// small pooled database into a fresh database.
func smallReplica(t *testing.T) (*Job, testenv.TenantDB, testenv.TenantDB) {
	t.Helper()
	s := src.NewSaaS(t, 20, 3)
	d := dst.NewTenantDB(t)
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", TargetSchema: "public", Tables: movedTables}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return j, s, d
}
