package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/testenv"
)

// Size is how much data a run moves: the moving tenant's rows per table,
// in a pooled database of Tenants tenants of that size.
type Size struct {
	Name                     string
	Customers, Orders, Lines int
	Tenants                  int
	Repeats                  int           // runs per measured figure (median)
	Load                     time.Duration // how long load phases run
	Backlog                  int           // pgbench transactions in the drain backlog
	Promotions               int
	// KafkaOrders, when set, is the size of the tenant the Kafka section
	// replicates instead of tenant 1: the in-process broker keeps every
	// record in memory, and a default-size tenant's snapshot would not
	// fit. That tenant is added to the same pooled database, and the
	// backlog is still this size's.
	KafkaOrders int
}

var sizes = map[string]Size{
	"default": {Name: "default", Customers: 100_000, Orders: 1_000_000, Lines: 3_000_000, Tenants: 10, Repeats: 3, Load: 20 * time.Second, Backlog: 40_000, Promotions: 10, KafkaOrders: 50_000},
	// tiny is what the test suite runs, so the benchmark cannot rot
	// without costing the suite minutes.
	"tiny":  {Name: "tiny", Customers: 2_000, Orders: 20_000, Lines: 60_000, Tenants: 6, Repeats: 1, Load: 3 * time.Second, Backlog: 2_000, Promotions: 4},
	"small": {Name: "small", Customers: 5_000, Orders: 50_000, Lines: 150_000, Tenants: 10, Repeats: 3, Load: 5 * time.Second, Backlog: 4_000, Promotions: 6},
}

// benchSchema is the pooled schema the benchmark moves: every key leads
// with tenant_id, so PostgreSQL's own row-filtered publication (the
// native baseline) can filter updates and deletes too.
const benchSchema = `
CREATE TABLE customers (tenant_id int NOT NULL, id bigint NOT NULL, email text NOT NULL, name text, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (tenant_id int NOT NULL, id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL,
    total numeric(12,2), note text, meta jsonb, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE order_lines (tenant_id int NOT NULL, order_id bigint NOT NULL, line int NOT NULL, sku text NOT NULL, qty int NOT NULL, price numeric(10,2));
CREATE SEQUENCE orders_id_seq;
`

var benchTables = []string{"customers", "orders", "order_lines"}

// keys are added after the load, as on any bulk-loaded database.
const benchKeys = `
ALTER TABLE customers ADD PRIMARY KEY (tenant_id, id);
ALTER TABLE orders ADD PRIMARY KEY (tenant_id, id);
ALTER TABLE order_lines ADD PRIMARY KEY (tenant_id, order_id, line);
SELECT setval('orders_id_seq', (SELECT max(id) FROM orders));
`

// seed fills the pooled database, one tenant per statement so two
// sessions can share the work.
func seed(ctx context.Context, dsn string, sz Size) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, benchSchema); err != nil {
		conn.Close(ctx)
		return fmt.Errorf("bench schema: %w", err)
	}
	conn.Close(ctx)
	g, gctx := errgroup.WithContext(ctx)
	work := make(chan int)
	g.Go(func() error {
		defer close(work)
		for t := 1; t <= sz.Tenants; t++ {
			select {
			case work <- t:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for w := 0; w < 2; w++ {
		g.Go(func() error {
			c, err := pgx.Connect(gctx, dsn)
			if err != nil {
				return err
			}
			defer c.Close(context.Background())
			for t := range work {
				if err := seedTenant(gctx, c, sz, t, sz.Customers, sz.Orders); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	conn, err = pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, benchKeys); err != nil {
		return fmt.Errorf("bench keys: %w", err)
	}
	if _, err := conn.Exec(ctx, "VACUUM ANALYZE"); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	return nil
}

// seedTenant fills tenant t with customers customers and orders orders
// (three lines each), keyed as a tenant of sz is: tenant t's ids start
// after t-1 tenants of sz.
func seedTenant(ctx context.Context, c *pgx.Conn, sz Size, t, customers, orders int) error {
	// Every statement takes all five parameters, so each names its own
	// with a no-op use: $2, $3 are sz's per-tenant id ranges, $4, $5 the
	// rows to make.
	for _, q := range []string{
		`INSERT INTO customers SELECT $1, ($1 - 1)::bigint * $2 + g, 'c' || g || '@t' || $1 || '.example.com', 'Customer ' || g, now() FROM generate_series(1, $4) g WHERE $3::int > 0 AND $5::int > 0`,
		`INSERT INTO orders SELECT $1, ($1 - 1)::bigint * $3 + g, ($1 - 1)::bigint * $2 + 1 + g % $4, (ARRAY['new','paid','shipped'])[1 + g % 3],
		    (g % 100000) / 7.0, 'order note ' || md5(g::text), jsonb_build_object('g', g, 'tags', jsonb_build_array('a', 'b')), now()
		  FROM generate_series(1, $5) g`,
		`INSERT INTO order_lines SELECT $1, ($1 - 1)::bigint * $3 + 1 + (g - 1) / 3, 1 + (g - 1) % 3, 'SKU-' || (g % 5000), 1 + g % 5, (g % 1000) / 10.0
		  FROM generate_series(1, $5 * 3) g WHERE $2::int > 0 AND $4::int > 0`,
	} {
		if _, err := c.Exec(ctx, q, t, sz.Customers, sz.Orders, customers, orders); err != nil {
			return fmt.Errorf("seed tenant %d: %w", t, err)
		}
	}
	return nil
}

// env is a run's clusters and pooled database. promoted, the baselines'
// reads of the source and the bench's own probes run as the
// least-privilege mover (srcMover), the load and its marker rows as the
// application's role (srcApp), the native baseline's publication as the
// tables' owner; only the targets are made as the superuser (CREATE
// SUBSCRIPTION needs it in PostgreSQL 15).
type env struct {
	size              Size
	src, dst          *testenv.Cluster
	srcMover, srcApp  string
	bin               string
	dbs               int
	moverOf           map[string]string // target DSN (superuser) -> the mover's
	pooled            testenv.TenantDB
	tenantsConfigured bool
}

// newTarget creates a target database and returns its superuser DSN; the
// mover's is moverOf[dsn].
func (e *env) newTarget(ctx context.Context, name string) (string, error) {
	e.dbs++
	n := fmt.Sprintf("%s_%d", name, e.dbs)
	if _, err := e.dst.CreateDB(ctx, n); err != nil {
		return "", err
	}
	db, err := e.dst.GrantTenantDB(ctx, n)
	if err != nil {
		return "", err
	}
	if e.moverOf == nil {
		e.moverOf = map[string]string{}
	}
	e.moverOf[db.Admin] = db.Mover
	return db.Admin, nil
}

// mover is the mover's connection string for a target created by
// newTarget.
func (e *env) mover(dstDSN string) string { return e.moverOf[dstDSN] }

func exec1(ctx context.Context, dsn, q string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, q, args...)
	return err
}

func queryLSN(ctx context.Context, dsn, q string, args ...any) (promoted.LSN, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	return lsnOn(ctx, conn, q, args...)
}

// lsnOn runs a query of one LSN (as text, or NULL for 0) on a session.
func lsnOn(ctx context.Context, conn *pgx.Conn, q string, args ...any) (promoted.LSN, error) {
	var s *string
	if err := conn.QueryRow(ctx, q, args...).Scan(&s); err != nil {
		return 0, err
	}
	if s == nil {
		return 0, nil
	}
	return promoted.ParseLSN(*s)
}

func currentLSN(ctx context.Context, dsn string) (promoted.LSN, error) {
	return queryLSN(ctx, dsn, "SELECT pg_current_wal_lsn()::text")
}

// daemon is a promoted process whose JSON log lines and peak memory the
// benchmark watches.
type daemon struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []map[string]any
	rss   map[string]int64 // phase -> peak RSS in bytes
	phase string
	done  chan struct{}
}

func startDaemon(ctx context.Context, bin string, args ...string) (*daemon, error) {
	args = append(args, "--log-format", "json", "--progress-interval", "1s")
	if lvl := os.Getenv("BENCH_LOG_LEVEL"); lvl != "" {
		args = append(args, "--log-level", lvl)
	}
	argv := onCPUs(targetCPUs, append([]string{bin}, args...)...)
	d := &daemon{cmd: exec.CommandContext(ctx, argv[0], argv[1:]...),
		rss: map[string]int64{}, phase: "plan", done: make(chan struct{})}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	d.cmd.Stdout = io.Discard
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go d.read(stderr)
	go d.sample()
	return d, nil
}

func (d *daemon) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	// BENCH_LOG=file keeps every daemon's log, for looking into a figure.
	var keep io.Writer = io.Discard
	if path := os.Getenv("BENCH_LOG"); path != "" {
		if f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			defer f.Close()
			keep = f
		}
	}
	for sc.Scan() {
		keep.Write(append(sc.Bytes(), '\n'))
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			m = map[string]any{"line": sc.Text()} // the exit's one-line error
		}
		d.mu.Lock()
		d.lines = append(d.lines, m)
		if m["msg"] == "phase" {
			d.phase, _ = m["stage"].(string)
		}
		d.mu.Unlock()
	}
	d.cmd.Wait()
	close(d.done)
}

// sample records the process's resident memory per phase.
func (d *daemon) sample() {
	for {
		select {
		case <-d.done:
			return
		case <-time.After(20 * time.Millisecond):
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			var kb int64
			if _, err := fmt.Sscanf(line, "VmRSS: %d kB", &kb); err == nil {
				d.mu.Lock()
				d.rss[d.phase] = max(d.rss[d.phase], kb*1024)
				d.mu.Unlock()
			}
		}
	}
}

// waitLine waits for a log line with the message.
func (d *daemon) waitLine(ctx context.Context, msg string, timeout time.Duration) (map[string]any, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		d.mu.Lock()
		for _, l := range d.lines {
			if l["msg"] == msg {
				d.mu.Unlock()
				return l, nil
			}
			if l["level"] == "ERROR" {
				d.mu.Unlock()
				return nil, fmt.Errorf("promoted: %v", l)
			}
		}
		d.mu.Unlock()
		select {
		case <-d.done:
			return nil, fmt.Errorf("promoted exited (%v) before logging %q: %s", d.cmd.ProcessState, msg, d.tail())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("promoted did not log %q within %s", msg, timeout)
}

func (d *daemon) tail() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for _, l := range d.lines[max(0, len(d.lines)-5):] {
		fmt.Fprintln(&b, l)
	}
	return b.String()
}

// stop sends SIGTERM and waits.
func (d *daemon) stop() {
	d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// hwm is the process's peak resident memory so far (VmHWM), which a
// phase too short for the sampler still shows.
func (d *daemon) hwm() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "VmHWM: %d kB", &kb); err == nil {
			return kb * 1024
		}
	}
	return 0
}

func (d *daemon) peakRSS(phase string) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rss[phase]
}

// appliedQuery is what promoted has applied to a target.
const appliedQuery = "SELECT max(applied_lsn)::text FROM promoted.progress"

func num(m map[string]any, k string) float64 {
	switch v := m[k].(type) {
	case float64:
		return v
	case string:
		var f float64
		fmt.Sscanf(v, "%g", &f)
		return f
	}
	return 0
}
