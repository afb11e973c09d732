package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/testenv"
)

// demo tells the whole story on throwaway local clusters: a pooled SaaS
// database under load, its biggest tenant replicated live into a second
// cluster, a row-by-row check, and everything removed afterwards.
func demo(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	var (
		c     common
		scale int
		live  time.Duration
	)
	fs.IntVar(&scale, "scale", 2000, "customers per small tenant (the big tenant has 10x)")
	fs.DurationVar(&live, "live", 10*time.Second, "how long to keep replicating under load after the catch-up")
	c.bind(fs)
	if err := parse(fs, args); err != nil {
		return err
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
	srcDSN, err := pooled.CreateDB(ctx, "saas")
	if err != nil {
		return err
	}
	dstDSN, err := dedicated.CreateDB(ctx, "tenant_1")
	if err != nil {
		return err
	}
	say("pooled database on port %d, dedicated database on port %d", pooled.Port, dedicated.Port)

	say("seeding a pooled SaaS schema: 5 tenants, tenant 1 is ten times bigger")
	if err := testenv.SeedSaaS(ctx, srcDSN, scale, 10); err != nil {
		return err
	}
	if err := printCounts(ctx, srcDSN, "public", "pooled database, rows per table (all tenants)", ""); err != nil {
		return err
	}

	say("starting writers on every tenant (orders, lines, updates, deletes, events moving between tenants)")
	stopLoad, err := testenv.Load(ctx, srcDSN, []int{1, 2, 3, 4, 5}, 1)
	if err != nil {
		return err
	}
	loadStopped := false
	defer func() {
		if !loadStopped {
			stopLoad()
		}
	}()

	say("replicating tenant 1 into the dedicated cluster, live")
	j, err := job.New(job.Config{SourceDSN: srcDSN, TargetDSN: dstDSN, Tenant: "1", Tables: testenv.MovedTables}, log)
	if err != nil {
		return err
	}
	jctx, cancelJob := context.WithCancel(ctx)
	defer cancelJob()
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var liveUntil time.Time
	for {
		select {
		case err := <-done:
			if err == nil {
				err = errors.New("the move stopped early")
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		switch j.Phase() {
		case "snapshot":
			fmt.Printf("    snapshot: %d rows copied\n", j.RowsCopied())
		case "catchup":
			if liveUntil.IsZero() {
				liveUntil = time.Now().Add(live)
				say("snapshot copied; streaming the tenant's changes while the writers keep going")
			}
			fmt.Printf("    live: applied up to %s, lag %d bytes\n", j.Applied(), j.Lag())
		default:
			fmt.Printf("    %s\n", j.Phase())
		}
		if !liveUntil.IsZero() && time.Now().After(liveUntil) {
			break
		}
	}
	writers := stopLoad()
	loadStopped = true
	var acks, errs int64
	for _, w := range writers {
		acks += w.Acks.Load()
		errs += w.Errs.Load()
	}
	say("writers stopped: %d writes acknowledged, %d failed", acks, errs)
	end, err := currentLSN(ctx, srcDSN)
	if err != nil {
		return err
	}
	say("waiting for the dedicated database to reach the source's WAL position %s", end)
	deadline := time.Now().Add(2 * time.Minute)
	for j.Applied() < end {
		if time.Now().After(deadline) {
			return fmt.Errorf("the target did not catch up with %s within 2 minutes (applied %s)", end, j.Applied())
		}
		select {
		case err := <-done:
			return fmt.Errorf("the move stopped: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	say("checking every row of tenant 1, table by table")
	if err := compareRows(ctx, srcDSN, dstDSN, "1"); err != nil {
		return err
	}
	cancelJob()
	if err := <-done; err != nil {
		return err
	}
	if _, err := job.Cancel(ctx, srcDSN, "public", "1"); err != nil {
		return err
	}
	say("replication stopped cleanly; slot and publication dropped; removing the clusters")
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
func compareRows(ctx context.Context, srcDSN, dstDSN, tenant string) error {
	open := func(dsn string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			return nil, err
		}
		for k, v := range promoted.SessionParams {
			cfg.RuntimeParams[k] = v
		}
		return pgx.ConnectConfig(ctx, cfg)
	}
	s, err := open(srcDSN)
	if err != nil {
		return err
	}
	defer s.Close(ctx)
	d, err := open(dstDSN)
	if err != nil {
		return err
	}
	defer d.Close(ctx)
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
