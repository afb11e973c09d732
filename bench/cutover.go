package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/testenv"
)

// sized is one promotion's figures at one tenant size.
type sized struct {
	rows              int64
	copySecs, blocked float64
	// tenant and target (the dedicated database's superuser DSN) name a
	// promotion of the scale section, for the demotion that follows.
	tenant int
	target string
}

// inProcessLogger is the logger of a move the benchmark runs in its own
// process: BENCH_LOG=file keeps its lines, like the daemons'.
func inProcessLogger() *slog.Logger {
	var w io.Writer = io.Discard
	if path := os.Getenv("BENCH_LOG"); path != "" {
		if f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			w = f // kept open for the benchmark's life
		}
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}

// cutovers promotes tenants of a SaaS database one after another while
// writers that follow the catalog run on every tenant, and returns how
// long each promotion blocked its tenant's writes: the first promotion is
// of tenant 1, ten times bigger (medium), the others of the small tenants
// 2 to 5. Each promotion goes to a fresh target database; between them the
// source is reset to the tenant's pooled state (fence and catalog entry
// removed).
func (e *env) cutovers(ctx context.Context) (small []sized, medium sized, err error) {
	if _, err := e.src.CreateDB(ctx, "cutover"); err != nil {
		return nil, sized{}, err
	}
	pooled, err := e.src.GrantTenantDB(ctx, "cutover")
	if err != nil {
		return nil, sized{}, err
	}
	if err := pooled.SeedAsOwner(ctx, e.size.Customers/100, 10); err != nil {
		return nil, sized{}, err
	}
	srcDSN := pooled.Mover // the owner of promoted's own tables resets them
	for i := 0; i < e.size.Promotions; i++ {
		tenant := 1
		if i > 0 {
			tenant = 2 + (i-1)%4
		}
		dstDSN, err := e.newTarget(ctx, "promotion")
		if err != nil {
			return nil, sized{}, err
		}
		dstApp := strings.Replace(e.mover(dstDSN), "//"+testenv.Mover+"@", "//"+testenv.App+"@", 1)
		router := &testenv.Router{CatalogDSN: pooled.App, Default: pooled.App, DSN: func(loc string) string {
			if loc == job.Redact(e.mover(dstDSN)) {
				return dstApp
			}
			return pooled.App
		}}
		stop, err := testenv.LoadRouted(ctx, pooled.App, []int{1, 2, 3, 4, 5}, 1, router)
		if err != nil {
			return nil, sized{}, err
		}
		cfg := job.Config{SourceDSN: pooled.Mover, TargetDSN: e.mover(dstDSN), Tenant: fmt.Sprint(tenant), Tables: testenv.MovedTables, Promote: true,
			Cutover: cutover.Config{Timeout: 5 * time.Second}}
		j, err := job.New(cfg, inProcessLogger())
		if err == nil {
			err = j.Run(ctx)
		}
		time.Sleep(300 * time.Millisecond) // the writers follow the flip
		writers := stop()
		router.Close()
		if err != nil {
			return nil, sized{}, fmt.Errorf("promotion %d of tenant %d: %w", i+1, tenant, err)
		}
		for _, w := range writers {
			if w.Errs.Load() > 0 {
				return nil, sized{}, fmt.Errorf("promotion %d: a writer of tenant %d failed: %v", i+1, w.Tenant, w.Last.Load())
			}
		}
		sum := j.Summary()
		one := sized{rows: sum.RowsCopied, copySecs: sum.CopySeconds, blocked: float64(sum.Cutover.Blocked.Microseconds()) / 1000}
		if tenant == 1 {
			medium = one
		} else {
			small = append(small, one)
		}
		// Back to pooled: the source becomes authoritative again.
		if err := exec1(ctx, srcDSN, `DELETE FROM promoted.fence; DELETE FROM promoted.tenant_catalog; DELETE FROM promoted.flips; DELETE FROM promoted.jobs`); err != nil {
			return nil, sized{}, err
		}
	}
	return small, medium, nil
}

// bigPromotions promotes tenants 2, 3, ... (Repeats of them), each as
// big as the bench's moving tenant, one after another, while pgbench runs
// the load of the tenants after them and a writer that follows the
// catalog writes to the tenant being moved: each cutover then drains and
// checks a default-size tenant's live changes, not an idle one's.
func (e *env) bigPromotions(ctx context.Context) ([]sized, error) {
	first := 2 + e.size.Repeats
	var out []sized
	err := e.underLoad(ctx, first, func() error {
		for t := 2; t < first; t++ {
			time.Sleep(time.Second)
			one, err := e.bigPromotion(ctx, t)
			if err != nil {
				return fmt.Errorf("promotion of tenant %d: %w", t, err)
			}
			out = append(out, one)
		}
		return nil
	})
	return out, err
}

// underLoad runs fn while pgbench writes to tenants first and after.
func (e *env) underLoad(ctx context.Context, first int, fn func() error) error {
	script := filepath.Join(os.TempDir(), "rest.sql")
	if first > e.size.Tenants {
		return fmt.Errorf("size %s: %d tenants leave none to load while %d are moved", e.size.Name, e.size.Tenants, e.size.Repeats)
	}
	if err := os.WriteFile(script, []byte(e.script(fmt.Sprintf("random(%d, %d)", first, e.size.Tenants))), 0o644); err != nil {
		return err
	}
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load := make(chan error, 1)
	go func() {
		_, err := e.pgbench(lctx, "", "-T", "3600", "-f", script)
		load <- err
	}()
	if err := fn(); err != nil {
		return err
	}
	stopLoad()
	if err := <-load; err != nil && lctx.Err() == nil {
		return err
	}
	return nil
}

// demotion takes the last tenant bigPromotions promoted back into the
// pooled tables, under the same pgbench load on the other tenants and
// with a writer on its dedicated side that follows the catalog: the copy
// rate into live pooled tables and the writes-blocked time, beside
// promote's. The promotion is first cleaned up the quick way, ending as
// `cleanup` ends (which deletes in small batches): the tenant's old
// pooled rows deleted, its fence row and fence triggers gone, its move
// recorded as cleaned up.
func (e *env) demotion(ctx context.Context, last sized) (sized, error) {
	t := last.tenant
	var drops []string
	for _, tbl := range benchTables {
		for _, trg := range cutover.TenantTriggers(fmt.Sprint(t)) {
			drops = append(drops, "DROP TRIGGER IF EXISTS "+trg+" ON "+tbl)
		}
	}
	reset := fmt.Sprintf(`DELETE FROM promoted.fence WHERE tenant_id = '%[1]d'; SET session_replication_role = replica;
	    DELETE FROM order_lines WHERE tenant_id = %[1]d; DELETE FROM orders WHERE tenant_id = %[1]d; DELETE FROM customers WHERE tenant_id = %[1]d;
	    RESET session_replication_role; %[2]s;
	    UPDATE promoted.jobs SET phase = '%[3]s' WHERE tenant_id = '%[1]d' AND kind = '%[4]s'`, t, strings.Join(drops, "; "), state.PhaseCleaned, state.KindPromote)
	// As the mover, who runs cleanup.
	if err := exec1(ctx, e.srcMover, reset); err != nil {
		return sized{}, fmt.Errorf("delete tenant %d's old pooled rows: %w", t, err)
	}
	if err := exec1(ctx, e.srcMover, `VACUUM ANALYZE order_lines, orders, customers`); err != nil {
		return sized{}, err
	}
	var out sized
	err := e.underLoad(ctx, 2+e.size.Repeats, func() error {
		dedicated := e.mover(last.target)
		d, err := startDaemon(ctx, e.bin, "demote", "--source", dedicated, "--target", e.srcMover, "--tenant", fmt.Sprint(t),
			"--tables", strings.Join(benchTables, ","), "--cutover-timeout", "10s")
		if err != nil {
			return err
		}
		dstApp := strings.Replace(dedicated, "//"+testenv.Mover+"@", "//"+testenv.App+"@", 1)
		router := &testenv.Router{CatalogDSN: e.srcApp, Default: e.srcApp, DSN: func(loc string) string {
			if loc == job.Redact(dedicated) {
				return dstApp
			}
			return e.srcApp
		}}
		defer router.Close()
		// Its ids start past those the promotion's writer took.
		w := &benchWriter{tenant: t, size: e.size, router: router, offset: 1 << 30}
		if out, err = e.follow(ctx, d, w); err != nil {
			return fmt.Errorf("demotion of tenant %d: %w", t, err)
		}
		return nil
	})
	return out, err
}

// bigPromotion promotes one tenant while a catalog-following writer
// writes to it.
func (e *env) bigPromotion(ctx context.Context, tenant int) (sized, error) {
	d, dstDSN, err := e.startPromote(ctx, fmt.Sprint(tenant))
	if err != nil {
		return sized{}, err
	}
	dstApp := strings.Replace(e.mover(dstDSN), "//"+testenv.Mover+"@", "//"+testenv.App+"@", 1)
	router := &testenv.Router{CatalogDSN: e.srcApp, Default: e.srcApp, DSN: func(loc string) string {
		if loc == job.Redact(e.mover(dstDSN)) {
			return dstApp
		}
		return e.srcApp
	}}
	defer router.Close()
	one, err := e.follow(ctx, d, &benchWriter{tenant: tenant, size: e.size, router: router})
	one.tenant, one.target = tenant, dstDSN
	return one, err
}

// follow runs the writer while the daemon moves its tenant, and returns
// the move's figures from the daemon's log.
func (e *env) follow(ctx context.Context, d *daemon, w *benchWriter) (sized, error) {
	wctx, stopWriter := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { defer close(wdone); w.run(wctx) }()
	lines, err := d.finished()
	time.Sleep(300 * time.Millisecond) // the writer follows the flip
	stopWriter()
	<-wdone
	if err != nil {
		return sized{}, err
	}
	if w.err != nil {
		return sized{}, fmt.Errorf("the tenant's writer: %w", w.err)
	}
	if !w.moved {
		return sized{}, fmt.Errorf("the tenant's writer never reached the new location (%d writes)", w.acks)
	}
	c := lines["snapshot copied"]
	return sized{rows: int64(num(c, "rows")), copySecs: num(c, "seconds"), blocked: num(lines["catalog flipped"], "blocked_ms")}, nil
}

// benchWriter writes one tenant's orders in the bench schema, following
// the catalog across the flip: a fenced write makes it re-resolve the
// tenant, as an application using promoted's catalog would.
type benchWriter struct {
	tenant int
	size   Size
	router *testenv.Router
	// offset moves the writer's ids past an earlier writer's.
	offset int64
	acks   int64
	moved  bool
	err    error
}

func (w *benchWriter) run(ctx context.Context) {
	pool, version, err := w.router.Resolve(ctx, w.tenant)
	if err != nil {
		w.err = err
		return
	}
	base := int64(w.tenant-1)*int64(w.size.Orders) + int64(w.size.Orders) + w.offset
	// Each step is an insert of a new order, then an update of an older
	// one; a fenced statement is retried at the tenant's new place, from
	// that statement on (the insert may have committed before the fence).
	inserted := false
	for n := int64(1); ctx.Err() == nil; n++ {
		id := base + n
		var err error
		if !inserted {
			_, err = pool.Exec(ctx, `INSERT INTO orders (tenant_id, id, customer_id, status, total) VALUES ($1, $2, $3, 'new', 1)`,
				w.tenant, id, int64(w.tenant-1)*int64(w.size.Customers)+1)
			inserted = err == nil
		}
		if err == nil {
			_, err = pool.Exec(ctx, `UPDATE orders SET total = total + 1 WHERE tenant_id = $1 AND id = $2`, w.tenant, id-n/2)
		}
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			w.acks++
			inserted = false
		case errors.As(err, &pgErr) && pgErr.Code == state.FenceSQLState:
			n-- // this step again, where the tenant now is
			p, v, rerr := w.router.Resolve(ctx, w.tenant)
			if rerr == nil && v != version {
				pool, version, w.moved = p, v, true
			} else {
				time.Sleep(2 * time.Millisecond)
			}
		case ctx.Err() == nil:
			w.err = err
			return
		}
	}
}
