package job

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/testenv"
)

// TestRollbackRoundTrip: promote tenant 2 while every tenant writes and
// follows the catalog; the tenant writes in its dedicated database; roll
// back (its writes there stream into its old pooled rows, which stay
// fenced for the application until the flip back); it writes in the
// pooled tables; promote it again. At each step every acknowledged write
// of the tenant is where the catalog says, the rows at the rollback's
// flip are equal row by row on both sides, and no other tenant's write
// fails.
func TestRollbackRoundTrip(t *testing.T) {
	ctx := context.Background()
	pooled, dedicated := src.NewSaaS(t, 40, 2), dst.NewTenantDB(t)
	pooledLoc, dedicatedLoc := Redact(pooled.Mover), Redact(dedicated.Mover)
	router := &testenv.Router{CatalogDSN: pooled.App, Default: pooled.App, DSN: func(loc string) string {
		if loc == dedicatedLoc {
			return dedicated.App
		}
		return pooled.App
	}}
	defer router.Close()
	var stop func() []*testenv.Writer
	startLoad := func() {
		var err error
		if stop, err = testenv.LoadRouted(ctx, pooled.App, []int{1, 2, 3}, 1, router); err != nil {
			t.Fatal(err)
		}
	}
	running := false
	defer func() {
		if running {
			stop()
		}
	}()
	stopLoad := func(what string) []*testenv.Writer {
		t.Helper()
		running = false
		ws := stop()
		for _, w := range ws {
			if w.Errs.Load() > 0 {
				t.Errorf("%s: tenant %d's writes failed: %v", what, w.Tenant, w.Last.Load())
			}
		}
		return ws
	}
	location := func() string {
		return queryOne[string](t, ctx, pooled.Admin, `SELECT location FROM promoted.tenant_catalog WHERE tenant_id = '2'`)
	}
	promote := func(what string) {
		t.Helper()
		j, err := New(Config{SourceDSN: pooled.Mover, TargetDSN: dedicated.Mover, Tenant: "2", Tables: movedTables, Promote: true}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := j.Run(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if s := j.Summary(); s == nil || !s.Rollback {
			t.Fatalf("%s: the summary offers no rollback", what)
		}
		if loc := location(); loc != dedicatedLoc {
			t.Fatalf("%s: the catalog sends tenant 2 to %s", what, loc)
		}
	}

	startLoad()
	running = true
	promote("promote")
	time.Sleep(time.Second) // the tenant writes in the dedicated database

	cfg, err := PrepareRollback(ctx, Config{SourceDSN: pooled.Mover, TargetDSN: dedicated.Mover, Tenant: "2"})
	if err != nil {
		t.Fatalf("prepare the rollback: %v", err)
	}
	j, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	// At the drain, under the fence on the dedicated side, the pooled
	// rows are pinned as they are flipped back.
	atFlip := make(chan *pgx.Conn, 1)
	j.Hooks.Cutover.AfterDrain = func() {
		c := testenv.Pinned(t, ctx, pooled.Admin)
		if _, err := c.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1"); err != nil {
			t.Error(err)
		}
		atFlip <- c
	}
	if err := j.Run(ctx); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if loc := location(); loc != pooledLoc {
		t.Fatalf("after the rollback the catalog sends tenant 2 to %s, want the pooled database %s", loc, pooledLoc)
	}
	snap := <-atFlip
	ded := connectPinned(t, ctx, dedicated.Admin)
	testenv.ComparePooledTenant(t, ctx, ded, snap, "public", "public", "tenant_id", "2", movedTables)
	snap.Close(ctx)
	ded.Close(ctx)
	if n := queryOne[int64](t, ctx, dedicated.Admin, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Errorf("%d slots left on the dedicated side after the rollback", n)
	}
	// The rolled-back promotion can never be cleaned up: its rows are
	// authoritative again.
	if _, err := Cleanup(ctx, EndConfig{SourceDSN: pooled.Mover, Tenant: "2"}, testLogger(t)); err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("cleanup of a rolled-back promotion: %v, want a refusal", err)
	}
	time.Sleep(time.Second) // the tenant writes in the pooled tables again
	first := stopLoad("promote and rollback")
	if w := tenantWriter(first); w.Fenced.Load() == 0 || !w.Moved.Load() {
		t.Error("the tenant's writer never met a fence nor moved: the round trip was not under its load")
	}
	checkTenantLedger(t, ctx, first, pooled.Admin, "after the rollback")

	startLoad()
	running = true
	promote("promote again")
	time.Sleep(500 * time.Millisecond)
	second := stopLoad("promote again")
	checkTenantLedger(t, ctx, append(first, second...), dedicated.Admin, "after promoting again")
}

func tenantWriter(ws []*testenv.Writer) *testenv.Writer {
	for _, w := range ws {
		if w.Tenant == 2 {
			return w
		}
	}
	return &testenv.Writer{}
}

// checkTenantLedger checks every customer tenant 2's writers inserted and saw
// acknowledged, at any step, is in dsn, once.
func checkTenantLedger(t *testing.T, ctx context.Context, writers []*testenv.Writer, dsn, when string) {
	t.Helper()
	var want []string
	for _, w := range writers {
		if w.Tenant == 2 {
			want = append(want, w.Ledger()...)
		}
	}
	if len(want) == 0 {
		t.Fatalf("%s: tenant 2's writers acknowledged no customer: the ledger proves nothing", when)
	}
	n := queryOne[int64](t, ctx, dsn, `SELECT count(*) FROM customers WHERE tenant_id = 2 AND email = ANY($1)`, want)
	if n != int64(len(want)) {
		t.Errorf("%s: %d of %d acknowledged customers of tenant 2 are where the catalog says", when, n, len(want))
	}
}

// TestRollbackRefusals: a promotion made with --no-rollback, one whose
// cleanup ran (which drops the rollback slot first), and one whose slot
// held more WAL than the budget (dropped then and there) are refused in
// one line naming the demotion to run instead.
func TestRollbackRefusals(t *testing.T) {
	ctx := context.Background()
	promote := func(t *testing.T, noRollback bool) (testenv.TenantDB, testenv.TenantDB) {
		pooled, dedicated := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		j, err := New(Config{SourceDSN: pooled.Mover, TargetDSN: dedicated.Mover, Tenant: "2", Tables: movedTables, Promote: true, NoRollback: noRollback}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := j.Run(ctx); err != nil {
			t.Fatalf("promote: %v", err)
		}
		return pooled, dedicated
	}
	slots := func(t *testing.T, dsn string) int64 {
		return queryOne[int64](t, ctx, dsn, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`)
	}
	refused := func(t *testing.T, cfg Config, want string) {
		t.Helper()
		_, err := PrepareRollback(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "promoted demote --source") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("rollback: %v, want one line containing %q and the demote to run", err, want)
		}
	}
	t.Run("no_rollback", func(t *testing.T) {
		pooled, dedicated := promote(t, true)
		if n := slots(t, dedicated.Admin); n != 0 {
			t.Errorf("--no-rollback left %d slots on the target", n)
		}
		refused(t, Config{SourceDSN: pooled.Mover, TargetDSN: dedicated.Mover, Tenant: "2"}, "kept no rollback slot")
	})
	t.Run("after_cleanup", func(t *testing.T) {
		pooled, dedicated := promote(t, false)
		if n := slots(t, dedicated.Admin); n != 1 {
			t.Fatalf("%d slots on the target after the promotion, want its rollback slot", n)
		}
		if _, err := Cleanup(ctx, EndConfig{SourceDSN: pooled.Mover, Tenant: "2"}, testLogger(t)); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
		if n := slots(t, dedicated.Admin); n != 0 {
			t.Errorf("cleanup left %d slots on the target", n)
		}
		refused(t, Config{SourceDSN: pooled.Mover, TargetDSN: dedicated.Mover, Tenant: "2"}, "was cleaned up")
	})
	t.Run("past_the_wal_budget", func(t *testing.T) {
		pooled, dedicated := promote(t, false)
		mustExec(t, ctx, dedicated.App, `INSERT INTO events (tenant_id, kind, payload) SELECT 2, 'bulk', repeat('x', 1000) FROM generate_series(1, 3000)`)
		refused(t, Config{SourceDSN: pooled.Mover, TargetDSN: dedicated.Mover, Tenant: "2", MaxRetainedWAL: 1 << 20}, "past --max-retained-wal")
		if n := slots(t, dedicated.Admin); n != 0 {
			t.Errorf("the slot past the budget was not dropped (%d slots)", n)
		}
		refused(t, Config{SourceDSN: pooled.Mover, TargetDSN: dedicated.Mover, Tenant: "2"}, "kept no rollback slot")
	})
}
