package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

func execCommand(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = os.Environ()
	return cmd
}

// scripts writes the pgbench scripts: one transaction on the moving tenant
// (an order with three lines, and an update of an existing order) and the
// same on a random other tenant.
func (e *env) scripts(dir string) (tenant, others string, err error) {
	tenant, others = filepath.Join(dir, "tenant.sql"), filepath.Join(dir, "others.sql")
	if err = os.WriteFile(tenant, []byte(e.script("1")), 0o644); err == nil {
		err = os.WriteFile(others, []byte(e.script(fmt.Sprintf("random(2, %d)", e.size.Tenants))), 0o644)
	}
	return tenant, others, err
}

// script is the pgbench transaction on tenant t (a number or a pgbench
// expression) of the size's rows.
func (e *env) script(t string) string { return e.scriptOf(t, e.size.Customers, e.size.Orders) }

// scriptOf is script on a tenant of customers customers and orders
// orders, keyed as a tenant of the size is (seedTenant).
func (e *env) scriptOf(t string, customers, orders int) string {
	return fmt.Sprintf(`\set t %s
\set c random(1, %d)
\set o random(1, %d)
BEGIN;
INSERT INTO orders (tenant_id, id, customer_id, status, total, note, meta) VALUES (:t, nextval('orders_id_seq'), (:t - 1) * %d + :c, 'new', 10.5, 'bench order', '{"bench": true}') RETURNING id AS oid \gset
INSERT INTO order_lines VALUES (:t, :oid, 1, 'SKU-1', 1, 1.0), (:t, :oid, 2, 'SKU-2', 2, 2.0), (:t, :oid, 3, 'SKU-3', 3, 3.0);
UPDATE orders SET total = total + 1, status = 'paid' WHERE tenant_id = :t AND id = (:t - 1) * %d + :o;
END;
`, t, customers, orders, e.size.Customers, e.size.Orders)
}

// pgbench runs PostgreSQL's pgbench against the source with the given
// arguments and returns its output; with logDir it keeps per-transaction
// latency logs there.
type pgbenchResult struct {
	tps       float64
	latencies []float64 // ms, when logged
}

// pgbenchArgv is the other tenants' or the moving tenant's pgbench as the
// application's role, two clients, on the source's CPU, logging every
// transaction into logDir when it is set.
func (e *env) pgbenchArgv(logDir string, args ...string) []string {
	full := append([]string{"-n", "-c", "2", "-j", "2"}, args...)
	if logDir != "" {
		full = append(full, "--log", "--log-prefix", filepath.Join(logDir, "pgbench_log"))
	}
	full = append(full, e.srcApp)
	return onCPUs(sourceCPUs, append([]string{e.src.Bin("pgbench")}, full...)...)
}

func (e *env) pgbench(ctx context.Context, logDir string, args ...string) (pgbenchResult, error) {
	argv := e.pgbenchArgv(logDir, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = os.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return pgbenchResult{}, fmt.Errorf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var r pgbenchResult
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "tps = ") {
			fmt.Sscanf(line, "tps = %f", &r.tps)
		}
	}
	if logDir != "" {
		for _, x := range readTxLog(logDir) {
			r.latencies = append(r.latencies, x.ms)
		}
	}
	return r, nil
}

// tx is one pgbench transaction from its --log: when it ended (Unix
// seconds) and how long it took.
type tx struct{ end, ms float64 }

// readTxLog reads and removes pgbench's per-transaction logs in dir
// (client, transaction, microseconds, script, epoch seconds, microseconds).
func readTxLog(dir string) []tx {
	var txs []tx
	files, _ := filepath.Glob(filepath.Join(dir, "pgbench_log*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 6 {
				continue
			}
			us, err1 := strconv.ParseFloat(fields[2], 64)
			sec, err2 := strconv.ParseFloat(fields[4], 64)
			usec, err3 := strconv.ParseFloat(fields[5], 64)
			if err1 == nil && err2 == nil && err3 == nil {
				txs = append(txs, tx{end: sec + usec/1e6, ms: us / 1000})
			}
		}
		os.Remove(f)
	}
	return txs
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

func median(xs []float64) float64 { return percentile(xs, 0.5) }

// waitRow waits until the target holds the marker customer the benchmark
// inserts after a backlog: both promoted and the native subscriber have
// applied everything of the tenant before it.
func waitRow(ctx context.Context, dstDSN string, id int64, timeout time.Duration) error {
	return poll(ctx, dstDSN, timeout, func(conn *pgx.Conn) (bool, error) {
		var n int64
		err := conn.QueryRow(ctx, "SELECT count(*) FROM customers WHERE tenant_id = 1 AND id = $1", id).Scan(&n)
		return n > 0, err
	}, fmt.Sprintf("the target did not show marker row %d within %s", id, timeout))
}

// poll asks done every 10 ms on one session of dsn (opened again if
// lost) until it says yes: a new session at every poll would fork a
// backend 100 times a second on the very cluster being timed.
func poll(ctx context.Context, dsn string, timeout time.Duration, done func(*pgx.Conn) (bool, error), fail string) error {
	deadline := time.Now().Add(timeout)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for time.Now().Before(deadline) {
		if conn == nil {
			c, err := connect(ctx, dsn)
			if err != nil {
				return err
			}
			conn = c
		}
		ok, err := done(conn)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			conn.Close(context.Background())
			conn = nil
		}
		if ok {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New(fail)
}

var markerSeq int64

// insertMarker adds a customer of the moving tenant with a fresh negative
// id and returns the id.
func (e *env) insertMarker(ctx context.Context) (int64, error) {
	markerSeq--
	return markerSeq, exec1(ctx, e.srcApp, "INSERT INTO customers (tenant_id, id, email) VALUES (1, $1, 'marker@example.com')", markerSeq)
}
