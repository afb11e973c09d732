package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/testenv"
)

// demo tells the whole story on throwaway local clusters: a pooled SaaS
// database under load, its biggest tenant promoted live into a second
// cluster, the catalog flipped, the tenant's writers following it, a
// row-by-row check, the old rows cleaned up; then the way back (the
// tenant demoted into the pooled tables, live, checked the same way), and
// everything removed.
func demo(ctx context.Context, args []string) error {
	g := newFlagGroups()
	var (
		c     common
		scale int
		live  time.Duration
		sink  string
	)
	g.Move.IntVar(&scale, "scale", 2000, "customers per small tenant (the big tenant has 10x)")
	g.Move.StringVar(&sink, "sink", "", "kafka: the analytics story instead (tenant 1 replicated into an in-process Kafka broker as Debezium records)")
	g.Cutover.DurationVar(&live, "live", 5*time.Second, "how long to replicate live under load before the cutover")
	c.bindLog(g.Observability)
	c.bindMetrics(g.Observability)
	if err := parse(g.flagSet("demo"), args); err != nil {
		return err
	}
	if sink != "" && sink != "kafka" {
		return fmt.Errorf("%w: --sink %q: the demo knows only --sink kafka", errUsage, sink)
	}
	if c.logLevel == "info" {
		c.logLevel = "warn" // the demo narrates; logs only for trouble
	}
	log, err := c.logger(os.Stderr)
	if err != nil {
		return err
	}
	if err := serveMetrics(ctx, c.metricsAddr, log); err != nil {
		return err
	}
	say := func(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

	say("starting two throwaway PostgreSQL 15 clusters (wal_level=logical)")
	pooled, err := testenv.Start(ctx, testenv.Options{Name: "demo-pooled"})
	if err != nil {
		return err
	}
	defer pooled.Stop()
	dedicated, err := testenv.Start(ctx, testenv.Options{Name: "demo-dedicated"})
	if err != nil {
		return err
	}
	defer dedicated.Stop()
	if _, err := pooled.CreateDB(ctx, "saas"); err != nil {
		return err
	}
	if _, err := dedicated.CreateDB(ctx, "tenant_1"); err != nil {
		return err
	}
	// Production-like roles: the tables' owner, the application, and
	// promoted's own least-privilege mover (README, Privileges).
	pooledDB, err := pooled.GrantTenantDB(ctx, "saas")
	if err != nil {
		return err
	}
	dedicatedDB, err := dedicated.GrantTenantDB(ctx, "tenant_1")
	if err != nil {
		return err
	}
	// The demo's own counts and checks read as the mover too: nothing
	// they read needs a superuser.
	srcDSN, dstDSN := pooledDB.Mover, dedicatedDB.Mover
	say("pooled database on port %d, dedicated database on port %d", pooled.Port, dedicated.Port)
	say("roles: %s owns the tables, %s is the application, promoted runs as %s (no superuser)", testenv.Owner, testenv.App, testenv.Mover)

	say("seeding a pooled SaaS schema: 5 tenants, tenant 1 is ten times bigger")
	if err := pooledDB.SeedAsOwner(ctx, scale, 10); err != nil {
		return err
	}
	if err := printCounts(ctx, srcDSN, "public", "pooled database, rows per table (all tenants)", ""); err != nil {
		return err
	}
	if sink == "kafka" {
		return demoKafka(ctx, log, say, pooledDB, live)
	}

	say("starting writers on every tenant; they find each tenant's location in the catalog, as an application would")
	router := &testenv.Router{CatalogDSN: pooledDB.App, Default: pooledDB.App, DSN: func(loc string) string {
		if loc == job.Redact(dedicatedDB.Mover) {
			return dedicatedDB.App
		}
		return pooledDB.App
	}}
	defer router.Close()
	stopLoad, err := testenv.LoadRouted(ctx, pooledDB.App, []int{1, 2, 3, 4, 5}, 1, router)
	if err != nil {
		return err
	}
	loadStopped := false
	defer func() {
		if !loadStopped {
			stopLoad()
		}
	}()

	say("promoting tenant 1 into the dedicated cluster, live")
	cfg := job.Config{SourceDSN: pooledDB.Mover, TargetDSN: dedicatedDB.Mover, Tenant: "1", Tables: testenv.MovedTables, Promote: true}
	cfg.Cutover.Timeout = 5 * time.Second
	j, err := job.New(cfg, log)
	if err != nil {
		return err
	}
	// Hold the cutover while the replica runs live for a while, so the
	// demo shows the catch-up; a real promote cuts over as soon as the
	// lag is below --max-lag.
	j.Hooks.BeforeCutover = func(ctx context.Context) {
		select {
		case <-ctx.Done():
		case <-time.After(live):
		}
	}
	atFlip := snapshotAtDrain(ctx, j, dstDSN)
	done := make(chan error, 1)
	go func() { done <- j.Run(ctx) }()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	said := map[string]bool{}
wait:
	for {
		select {
		case err := <-done:
			if err != nil {
				return err
			}
			break wait
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		switch p := j.Phase(); p {
		case "snapshot":
			fmt.Printf("    snapshot: %d rows copied\n", j.RowsCopied())
		case "catchup":
			if !said[p] {
				say("snapshot copied; streaming the tenant's changes while the writers keep going")
				said[p] = true
			}
			fmt.Printf("    live: applied up to %s, lag %d bytes\n", j.Applied(), j.Lag())
		default:
			fmt.Printf("    %s\n", p)
		}
	}
	sum := j.Summary()
	say("catalog flipped: tenant 1 now lives in the dedicated database")
	printSummary(os.Stdout, "promoted", "1", sum)
	say("the writers of tenant 1 hit the fence (PM001), re-read the catalog and carry on in the dedicated database")
	time.Sleep(3 * time.Second)
	writers := stopLoad()
	loadStopped = true
	var acks, errs, fenced int64
	moved := 0
	for _, w := range writers {
		acks += w.Acks.Load()
		errs += w.Errs.Load()
		fenced += w.Fenced.Load()
		if w.Moved.Load() {
			moved++
		}
	}
	say("writers stopped: %d writes acknowledged, %d fenced and retried, %d failed; %d writer(s) moved", acks, fenced, errs, moved)
	if errs > 0 {
		return fmt.Errorf("%d writes failed", errs)
	}

	say("checking every row of tenant 1: the fenced source against the dedicated database as it was at the flip")
	var snap *pgx.Conn
	select {
	case snap = <-atFlip:
	default:
		return errors.New("no snapshot of the target was taken at the drain point")
	}
	err = compareRows(ctx, srcDSN, snap, "1")
	// The snapshot's open transaction would hold up the demotion's
	// barrier on the dedicated side below.
	snap.Close(ctx)
	if err != nil {
		return err
	}
	if err := checkLedger(ctx, dstDSN, "the dedicated database", writers); err != nil {
		return err
	}

	say("cleanup: deleting tenant 1's old rows from the pooled tables in batches, removing the fence")
	deleted, err := job.Cleanup(ctx, job.EndConfig{SourceDSN: pooledDB.Mover, Tenant: "1"}, log)
	if err != nil {
		return err
	}
	for _, t := range testenv.MovedTables {
		fmt.Printf("      %-12s %9d old rows deleted\n", t, deleted["public."+t])
	}
	if err := demoteBack(ctx, log, say, pooledDB, dedicatedDB, router); err != nil {
		return err
	}
	say("done; removing the clusters")
	return nil
}

// demoteBack is the way back: tenant 1 downgrades, and moves from its
// dedicated database into the pooled tables, live, while every tenant
// keeps writing (the others into the very tables it moves into). The
// same row-by-row check follows.
func demoteBack(ctx context.Context, log *slog.Logger, say func(string, ...any), pooledDB, dedicatedDB testenv.TenantDB, router *testenv.Router) error {
	say("the way back: tenant 1 downgrades; demoting it into the pooled tables, live, while every tenant writes")
	stopLoad, err := testenv.LoadRouted(ctx, pooledDB.App, []int{1, 2, 3, 4, 5}, 1, router)
	if err != nil {
		return err
	}
	loadStopped := false
	defer func() {
		if !loadStopped {
			stopLoad()
		}
	}()
	cfg := job.Config{SourceDSN: dedicatedDB.Mover, TargetDSN: pooledDB.Mover, Tenant: "1", Tables: testenv.MovedTables, Demote: true}
	j, err := job.New(cfg, log)
	if err != nil {
		return err
	}
	atFlip := snapshotAtDrain(ctx, j, pooledDB.Mover)
	if err := j.Run(ctx); err != nil {
		return err
	}
	say("catalog flipped back: tenant 1 lives in the pooled tables again")
	printSummary(os.Stdout, "demoted", "1", j.Summary())
	time.Sleep(2 * time.Second)
	writers := stopLoad()
	loadStopped = true
	var acks, errs int64
	for _, w := range writers {
		acks += w.Acks.Load()
		errs += w.Errs.Load()
	}
	say("writers stopped: %d writes acknowledged, %d failed", acks, errs)
	if errs > 0 {
		return fmt.Errorf("%d writes failed", errs)
	}
	say("checking every row of tenant 1: the fenced dedicated database against the pooled tables as they were at the flip")
	var snap *pgx.Conn
	select {
	case snap = <-atFlip:
	default:
		return errors.New("no snapshot of the pooled tables was taken at the drain point")
	}
	defer snap.Close(ctx)
	if err := compareRows(ctx, dedicatedDB.Mover, snap, "1"); err != nil {
		return err
	}
	if err := checkLedger(ctx, pooledDB.Mover, "the pooled tables", writers); err != nil {
		return err
	}
	say("the dedicated tables stay, fenced, until `promoted cleanup --drop-source-tables`")
	return nil
}

// snapshotAtDrain pins, at the drain point under the fence, a snapshot of
// the move's target, so the final row-by-row check sees it exactly as it
// was flipped.
func snapshotAtDrain(ctx context.Context, j *job.Job, dsn string) <-chan *pgx.Conn {
	atFlip := make(chan *pgx.Conn, 1)
	j.Hooks.Cutover.AfterDrain = func() {
		if conn, err := pinnedConn(ctx, dsn); err == nil {
			if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1"); err == nil {
				atFlip <- conn
				return
			}
			conn.Close(ctx)
		}
	}
	return atFlip
}

func pinnedConn(ctx context.Context, dsn string) (*pgx.Conn, error) {
	return testenv.PinnedConn(ctx, dsn)
}

// checkLedger checks every customer a writer of tenant 1 inserted and saw
// acknowledged, before or after the flip, is where the tenant now lives.
func checkLedger(ctx context.Context, dsn, where string, writers []*testenv.Writer) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	// The demo's second set of writers reuses the first set's names:
	// each acknowledged name must be there (once or more).
	seen := map[string]bool{}
	var want []string
	for _, w := range writers {
		if w.Tenant != 1 {
			continue
		}
		for _, e := range w.Ledger() {
			if !seen[e] {
				seen[e] = true
				want = append(want, e)
			}
		}
	}
	var found int
	if err := conn.QueryRow(ctx, `SELECT count(DISTINCT email) FROM customers WHERE tenant_id = 1 AND email = ANY($1)`, want).Scan(&found); err != nil {
		return err
	}
	fmt.Printf("      %d of %d acknowledged customer inserts of tenant 1 found in %s\n", found, len(want), where)
	if found != len(want) {
		return fmt.Errorf("%d acknowledged writes are missing", len(want)-found)
	}
	return nil
}

func currentLSN(ctx context.Context, dsn string) (promoted.LSN, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		return 0, err
	}
	return promoted.ParseLSN(s)
}

func printCounts(ctx context.Context, dsn, schema, title, tenant string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	fmt.Printf("    %s:\n", title)
	for _, t := range testenv.MovedTables {
		var n int64
		q := "SELECT count(*) FROM " + pgx.Identifier{schema, t}.Sanitize()
		if err := conn.QueryRow(ctx, q).Scan(&n); err != nil {
			return err
		}
		fmt.Printf("      %-12s %9d\n", t, n)
	}
	return nil
}

// compareRows compares the tenant's rows one by one, in key order, as text
// under pinned GUCs, and prints a line per table.
func compareRows(ctx context.Context, srcDSN string, d *pgx.Conn, tenant string) error {
	s, err := pinnedConn(ctx, srcDSN)
	if err != nil {
		return err
	}
	defer s.Close(ctx)
	bad := 0
	for _, t := range testenv.MovedTables {
		q := "SELECT x::text FROM " + pgx.Identifier{"public", t}.Sanitize() + " x WHERE tenant_id = $1 ORDER BY 1"
		a, err := textRows(ctx, s, q, tenant)
		if err != nil {
			return err
		}
		b, err := textRows(ctx, d, q, tenant)
		if err != nil {
			return err
		}
		diff := 0
		for i := 0; i < max(len(a), len(b)); i++ {
			if i >= len(a) || i >= len(b) || a[i] != b[i] {
				diff++
			}
		}
		status := "identical"
		if diff > 0 {
			status = fmt.Sprintf("%d rows DIFFER", diff)
			bad++
		}
		fmt.Printf("      %-12s source %7d rows, target %7d rows: %s\n", t, len(a), len(b), status)
	}
	if bad > 0 {
		return fmt.Errorf("%d tables differ between source and target", bad)
	}
	return nil
}

func textRows(ctx context.Context, conn *pgx.Conn, q string, args ...any) ([]string, error) {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
