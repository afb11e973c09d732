package job

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/testenv"
)

// tenantCounts is each table's row count of one tenant.
func tenantCounts(t *testing.T, ctx context.Context, dsn, schema, tenant string, tables []string) map[string]int64 {
	t.Helper()
	c := connectPinned(t, ctx, dsn)
	defer c.Close(ctx)
	out := map[string]int64{}
	for _, tbl := range tables {
		var n int64
		if err := c.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s WHERE tenant_id::text = $1`, pgx.Identifier{schema, tbl}.Sanitize()), tenant).Scan(&n); err != nil {
			t.Fatal(err)
		}
		out[tbl] = n
	}
	return out
}

// TestCleanupDeletesOnlyWhatMoved promotes two of tenant 1's tables and
// cleans up without naming them: only those two lose the tenant's rows.
// A cleanup naming other tables or another tenant column is refused.
// (Cleanup once rebuilt the move from its own flags and deleted rows that
// were never copied.)
func TestCleanupDeletesOnlyWhatMoved(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 60, 3)
	d := dst.NewTenantDB(t)
	moved := []string{"orders", "order_lines"}
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: moved, Promote: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Run(ctx); err != nil {
		t.Fatalf("promote: %v", err)
	}
	kept := []string{"customers", "events"}
	before := tenantCounts(t, ctx, s.Admin, "public", "1", kept)
	for _, bad := range []EndConfig{
		{SourceDSN: s.Mover, Tenant: "1", TenantColumn: "customer_id"},
		{SourceDSN: s.Mover, Tenant: "1", Tables: testenv.MovedTables},
		{SourceDSN: s.Mover, Tenant: "1", TargetSchema: "elsewhere"},
	} {
		if _, err := Cleanup(ctx, bad, testLogger(t)); err == nil || !strings.Contains(err.Error(), "leave the flag out") {
			t.Errorf("cleanup %+v: %v, want a refusal naming the move's own value", bad, err)
		}
	}
	deleted, err := Cleanup(ctx, EndConfig{SourceDSN: s.Mover, Tenant: "1", BatchRows: 100}, testLogger(t))
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	t.Logf("deleted %v", deleted)
	if after := tenantCounts(t, ctx, s.Admin, "public", "1", kept); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("tables that were not moved lost tenant 1's rows: %v before, %v after", before, after)
	}
	for tbl, n := range tenantCounts(t, ctx, s.Admin, "public", "1", moved) {
		if n != 0 {
			t.Errorf("%s still holds %d rows of tenant 1 after cleanup", tbl, n)
		}
	}
	if n := fenceTriggers(t, ctx, s.Admin); n != 0 {
		t.Errorf("%d fence triggers left after the last move's cleanup", n)
	}
}

// TestCancelDropTargetDropsOnlyWhatItMade replicates tenant 1 into a
// database whose customers table existed before, holding tenant 9's rows.
// cancel --drop-target drops the tables the move created and deletes only
// tenant 1's rows from the table it found.
func TestCancelDropTargetDropsOnlyWhatItMade(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	mustExec(t, ctx, d.Owner, `CREATE TABLE customers (tenant_id bigint NOT NULL, id bigint NOT NULL, email text NOT NULL, name text, PRIMARY KEY (tenant_id, id));
		INSERT INTO customers SELECT 9, g, 'nine-' || g, NULL FROM generate_series(1, 25) g`)
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: movedTables}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitCatchup(t, j, done)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := tenantCounts(t, ctx, d.Admin, "public", "1", []string{"customers"})["customers"]; n == 0 {
		t.Fatal("the replica holds no customers of tenant 1: the test proves nothing")
	}
	if _, err := Cancel(ctx, EndConfig{SourceDSN: s.Mover, Tenant: "1", DropTarget: true, TargetDSN: d.Mover}, testLogger(t)); err != nil {
		t.Fatalf("cancel --drop-target: %v", err)
	}
	c := connectPinned(t, ctx, d.Admin)
	defer c.Close(ctx)
	tables := rowsOf(t, ctx, c, `SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1`)
	if strings.Join(tables, ",") != "customers" {
		t.Errorf("tables left on the target: %v, want only the customers table that was there before", tables)
	}
	if got := rowsOf(t, ctx, c, `SELECT tenant_id || ':' || count(*) FROM customers GROUP BY tenant_id`); strings.Join(got, ",") != "9:25" {
		t.Errorf("customers holds %v, want tenant 9's 25 rows and nothing of tenant 1", got)
	}
	if n := rowsOf(t, ctx, c, `SELECT count(*)::text FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typname IN ('order_status', 'positive_int')`); n[0] != "0" {
		t.Errorf("%s types the move created are left on the target", n[0])
	}
}

// TestCancelThenPromoteAgain stops a replica, cancels it without
// dropping the target, and promotes the tenant: the promotion copies the
// tenant anew and flips. (It once looped on "run cancel".)
func TestCancelThenPromoteAgain(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	rep := p.job.cfg
	rep.Promote = false
	j, err := New(rep, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitCatchup(t, j, done)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := Cancel(ctx, EndConfig{SourceDSN: p.src.Mover, Tenant: "1"}, testLogger(t)); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	// The replica diverges while nobody streams into it.
	mustExec(t, ctx, p.srcDSN, `UPDATE customers SET name = 'after cancel' WHERE tenant_id = 1`)
	if err := p.job.Run(ctx); err != nil {
		t.Fatalf("promote after cancel: %v", err)
	}
	checkCatalogAndSource(t, ctx, p, 2)
	compareTenant(t, ctx, p.srcDSN, p.dstDSN, "public", "public", "1", movedTables)
}

// TestRerunAfterKeysWereBuilt stops a move after the target's keys and
// foreign keys were built but before the catch-up was recorded, as a
// crash there would: the rerun starts the copy over and finishes. (It
// once failed every rerun on a foreign-key violation.)
func TestRerunAfterKeysWereBuilt(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	cfg := Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: movedTables}
	j, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel := context.WithCancel(ctx)
	j.Hooks.AfterKeys = cancel
	j.Run(jctx) // stopped: a clean stop or an error, either is fine here
	c := connectPinned(t, ctx, d.Admin)
	defer c.Close(ctx)
	if fks := rowsOf(t, ctx, c, `SELECT count(*)::text FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace`); fks[0] == "0" {
		t.Fatal("no foreign key on the target after the interrupted run: the test proves nothing")
	}
	j, err = New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel = context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitCatchup(t, j, done)
	end := currentLSN(t, ctx, s.Admin)
	waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
	compareTenant(t, ctx, s.Admin, d.Admin, "public", "public", "1", movedTables)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSlotLostAdviceWorks loses the move's slot while it is stopped: the
// rerun's error says to cancel and run the command again, and doing so
// brings the replica back.
func TestSlotLostAdviceWorks(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	cfg := Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: movedTables}
	run := func() (*Job, func() error) {
		j, err := New(cfg, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		jctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- j.Run(jctx) }()
		waitCatchup(t, j, done)
		return j, func() error { cancel(); return <-done }
	}
	_, stop := run()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, s.Admin, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database()`)
	j, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	err = j.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "promoted cancel") || !strings.Contains(err.Error(), "same command again") {
		t.Fatalf("rerun without the slot: %v, want advice to cancel and run again", err)
	}
	if _, err := Cancel(ctx, EndConfig{SourceDSN: s.Mover, Tenant: "1"}, testLogger(t)); err != nil {
		t.Fatalf("cancel, as advised: %v", err)
	}
	mustExec(t, ctx, s.Admin, `UPDATE customers SET name = 'while no slot' WHERE tenant_id = 1`)
	j, stop = run()
	end := currentLSN(t, ctx, s.Admin)
	waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
	compareTenant(t, ctx, s.Admin, d.Admin, "public", "public", "1", movedTables)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestTenantSpellings replicates tenant 042 and then runs the same move
// as 42: one tenant, one move (the second run resumes it); cancel finds it
// as 0042.
func TestTenantSpellings(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	mustExec(t, ctx, s.Admin, `INSERT INTO tenants VALUES (42, 'forty-two');
		INSERT INTO customers (tenant_id, email) SELECT 42, 'c' || g FROM generate_series(1, 30) g`)
	d := dst.NewTenantDB(t)
	var ids []string
	for _, spelling := range []string{"042", "42"} {
		j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: spelling, Tables: []string{"customers"}}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		jctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- j.Run(jctx) }()
		waitCatchup(t, j, done)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("tenant %s: %v", spelling, err)
		}
		ids = append(ids, j.ID)
		if spelling == "42" && j.RowsCopied() != 0 {
			t.Errorf("tenant 42 copied %d rows again: the move of 042 was not resumed", j.RowsCopied())
		}
	}
	if ids[0] != ids[1] {
		t.Fatalf("tenant 042 and 42 are moves %s and %s, want one", ids[0], ids[1])
	}
	id, err := Cancel(ctx, EndConfig{SourceDSN: s.Mover, Tenant: "0042"}, testLogger(t))
	if err != nil || id != ids[0] {
		t.Fatalf("cancel 0042: move %s, %v; want move %s", id, err, ids[0])
	}
	c := connectPinned(t, ctx, s.Admin)
	defer c.Close(ctx)
	if n := rowsOf(t, ctx, c, `SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()`); len(n) != 0 {
		t.Errorf("slots %v left after the cancel", n)
	}
}

// TestAwkwardTenantRestarts moves a text tenant whose id holds dollar
// quotes, a quote and a percent sign, interrupts the copy, and reruns: the
// restart clears the target and the move completes with identical rows.
func TestAwkwardTenantRestarts(t *testing.T) {
	ctx := context.Background()
	s := src.NewTenantDB(t)
	tenant := `a$$b'c%d$promoted$`
	mustExec(t, ctx, s.Owner, `CREATE TYPE "odd$promoted$kind" AS ENUM ('x$promoted$y', 'plain');
		CREATE TABLE docs (tenant text NOT NULL, id int NOT NULL, kind "odd$promoted$kind" NOT NULL DEFAULT 'x$promoted$y',
		    body text CHECK (body <> '$promoted$'), PRIMARY KEY (tenant, id))`)
	mustExec(t, ctx, s.Owner, `INSERT INTO docs (tenant, id, body) SELECT t, g, 'body ' || g FROM unnest(ARRAY[$1, 'other']) t, generate_series(1, 400) g`, tenant)
	d := dst.NewTenantDB(t)
	cfg := Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: tenant, TenantColumn: "tenant", Tables: []string{"docs"}}
	cfg.Copy.ChunkRows = 100
	j, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel := context.WithCancel(ctx)
	j.Hooks.AfterChunk = func(string) { cancel() }
	j.Run(jctx) // stopped during the copy
	if phase := rowsOf(t, ctx, connectPinned(t, ctx, d.Admin), `SELECT phase FROM promoted.progress`); len(phase) != 1 || phase[0] != "snapshot" {
		t.Fatalf("the target records phase %v after the interrupted copy, want snapshot", phase)
	}
	j, err = New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel = context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitCatchup(t, j, done)
	mustExec(t, ctx, s.Admin, `UPDATE docs SET kind = 'plain' WHERE tenant = $1 AND id < 10`, tenant)
	end := currentLSN(t, ctx, s.Admin)
	waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
	sc, dc := connectPinned(t, ctx, s.Admin), connectPinned(t, ctx, d.Admin)
	defer sc.Close(ctx)
	defer dc.Close(ctx)
	testenv.CompareTenant(t, ctx, sc, dc, "public", "public", "tenant", tenant, []string{"docs"})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestEmptyTenantRefused refuses a tenant without rows (a typo) unless
// --allow-empty, and creates nothing meanwhile.
func TestEmptyTenantRefused(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 20, 2)
	d := dst.NewTenantDB(t)
	cfg := Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "999999", Tables: movedTables, Promote: true}
	j, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	err = j.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "tenant 999999 has no rows") || !strings.Contains(err.Error(), "--allow-empty") {
		t.Fatalf("promote of an empty tenant: %v, want a refusal", err)
	}
	c := connectPinned(t, ctx, s.Admin)
	defer c.Close(ctx)
	if n := rowsOf(t, ctx, c, `SELECT count(*)::text FROM pg_namespace WHERE nspname = 'promoted'`); n[0] != "0" {
		t.Error("the refusal created promoted's schema on the source")
	}
	cfg.AllowEmpty, cfg.Promote = true, false
	j, err = New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitCatchup(t, j, done)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("with --allow-empty: %v", err)
	}
}

// TestSequencesCalledByName promotes a tenant whose application draws
// invoice numbers from a sequence no column uses: with --sequences it
// exists at the new location, above the source's value, and the
// application's role may call it; without, the plan warns.
func TestSequencesCalledByName(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	mustExec(t, ctx, p.src.Owner, `CREATE SEQUENCE invoice_no_seq; SELECT setval('invoice_no_seq', 5000); GRANT USAGE ON SEQUENCE invoice_no_seq TO `+testenv.App)
	p.job.cfg.Sequences = []string{"invoice_no_seq"}
	if err := p.job.Run(ctx); err != nil {
		t.Fatalf("promote: %v", err)
	}
	c := connectPinned(t, ctx, p.dst.App)
	defer c.Close(ctx)
	var next int64
	if err := c.QueryRow(ctx, `SELECT nextval('invoice_no_seq')`).Scan(&next); err != nil {
		t.Fatalf("the application calls its sequence at the new location: %v", err)
	}
	if next <= 5000 {
		t.Errorf("nextval at the new location is %d, want above the source's 5000", next)
	}
	warned := false
	for _, n := range p.job.plan.Notes {
		warned = warned || strings.Contains(n, "invoice_no_seq")
	}
	if warned {
		t.Error("a sequence named with --sequences is still reported as left behind")
	}

	// Without the flag, the plan says what is left behind.
	q := newPromotion(t, true)
	mustExec(t, ctx, q.src.Owner, `CREATE SEQUENCE invoice_no_seq`)
	q.job.cfg.Promote = false
	jctx, cancel := context.WithCancel(ctx)
	q.job.Hooks.Streaming = cancel
	if err := q.job.Run(jctx); err != nil {
		t.Fatal(err)
	}
	warned = false
	for _, n := range q.job.plan.Notes {
		warned = warned || (strings.Contains(n, "invoice_no_seq") && strings.Contains(n, "--sequences"))
	}
	if !warned {
		t.Errorf("no warning about the sequence left behind in %q", q.job.plan.Notes)
	}
}

// TestCleanupOrdersAndVacuums cleans up a tenant whose orders reference
// customers without an index on the referencing columns: the plan warns,
// and cleanup empties orders first and VACUUMs it before deleting the
// customers, so each customer's foreign-key check does not wade through
// the dead orders (docs/hazards.md 14.6).
func TestCleanupOrdersAndVacuums(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	if err := p.job.Run(ctx); err != nil {
		t.Fatalf("promote: %v", err)
	}
	warned := false
	for _, n := range p.job.plan.Notes {
		warned = warned || strings.Contains(n, "orders_tenant_id_customer_id_fkey") && strings.Contains(n, "no index")
	}
	if !warned {
		t.Errorf("no warning about the unindexed foreign key in %q", p.job.plan.Notes)
	}
	vacuums := func() int64 {
		var n int64
		c := connectPinned(t, ctx, p.srcDSN)
		defer c.Close(ctx)
		if err := c.QueryRow(ctx, `SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'orders'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := vacuums()
	start := time.Now()
	if _, err := Cleanup(ctx, EndConfig{SourceDSN: p.src.Mover, Tenant: "1", BatchRows: 200}, testLogger(t)); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	t.Logf("cleanup took %s", time.Since(start))
	deadline := time.Now().Add(5 * time.Second)
	for vacuums() == before && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // statistics arrive a little later
	}
	if vacuums() == before {
		t.Error("cleanup did not VACUUM orders before deleting the customers it referenced")
	}
	for tbl, n := range tenantCounts(t, ctx, p.srcDSN, "public", "1", movedTables) {
		if n != 0 {
			t.Errorf("%s still holds %d rows of tenant 1", tbl, n)
		}
	}
}
