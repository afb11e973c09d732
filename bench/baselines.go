package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// The baselines are what a user would run instead of promoted, run the
// way they would run them: psql processes piped into each other, and
// PostgreSQL's own subscription. None shares promoted's code, so none can
// share its bottleneck.

// Pinning: with two or more CPUs the source cluster and the load against
// it (pgbench) run on CPU 0, the target cluster, promoted, the psql
// clients and this process on CPU 1, as two machines would; a move's cost
// to the pooled database is then the source's, not CPU contention between
// the two clusters.
var (
	sourceCPUs, targetCPUs string
)

func setupPinning() {
	if runtime.NumCPU() < 2 {
		return
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return
	}
	if exec.Command("taskset", "-p", "-c", "1", strconv.Itoa(os.Getpid())).Run() != nil {
		return
	}
	sourceCPUs, targetCPUs = "0", "1"
}

// onCPUs prefixes a command with taskset for cpus, when pinning is on.
func onCPUs(cpus string, argv ...string) []string {
	if cpus == "" {
		return argv
	}
	return append([]string{"taskset", "-c", cpus}, argv...)
}

// psqlPipe is the copy baseline: for each table, one after another,
//
//	psql SRC -c "COPY (SELECT * FROM t WHERE tenant_id = 1) TO STDOUT (FORMAT binary)" |
//	psql DST -c "COPY t FROM STDIN (FORMAT binary)"
//
// into bare tables. It returns the rows copied and the seconds.
func (e *env) psqlPipe(ctx context.Context, dstDSN string) (copyRun, error) {
	psql := e.src.Bin("psql")
	start := time.Now()
	for _, t := range benchTables {
		script := fmt.Sprintf(`"$PSQL" -X -q -d "$SRC" -c "COPY (SELECT * FROM %s WHERE %s) TO STDOUT (FORMAT binary)" | "$PSQL" -X -q -d "$DST" -c "COPY %s FROM STDIN (FORMAT binary)"`,
			t, tenantWhere, t)
		argv := onCPUs(targetCPUs, "sh", "-ec", script)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "PSQL="+psql, "SRC="+e.srcMover, "DST="+dstDSN)
		if out, err := cmd.CombinedOutput(); err != nil {
			return copyRun{}, fmt.Errorf("psql | psql %s: %v: %s", t, err, out)
		}
	}
	secs := time.Since(start).Seconds()
	rows, err := e.targetRows(ctx, dstDSN)
	return copyRun{rows: rows, secs: secs}, err
}

// targetRows counts the tenant's rows copied into a target.
func (e *env) targetRows(ctx context.Context, dstDSN string) (int64, error) {
	conn, err := connect(ctx, dstDSN)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var total int64
	for _, t := range benchTables {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&n); err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// psqlCopy runs the psql pipe into a fresh target of bare tables.
func (e *env) psqlCopy(ctx context.Context) (copyRun, error) {
	dstDSN, err := e.newTarget(ctx, "psql")
	if err != nil {
		return copyRun{}, err
	}
	if err := exec1(ctx, dstDSN, benchSchema); err != nil {
		return copyRun{}, err
	}
	return e.psqlPipe(ctx, dstDSN)
}

// nativeSync is PostgreSQL's own initial sync of the tenant: a
// row-filtered publication and a subscription into bare tables, timed
// until every table is ready (pg_subscription_rel all 'r').
func (e *env) nativeSync(ctx context.Context) (copyRun, error) {
	start := time.Now()
	n, err := e.newNativeInto(ctx, true, benchSchema)
	if err != nil {
		return copyRun{}, err
	}
	defer n.drop(context.Background())
	if err := n.synced(ctx, 30*time.Minute); err != nil {
		return copyRun{}, err
	}
	secs := time.Since(start).Seconds()
	rows, err := e.targetRows(ctx, n.dstDSN)
	return copyRun{rows: rows, secs: secs}, err
}

// offline is the whole move done by hand with the database closed to the
// tenant: bare tables, the psql pipe, then the same keys, with psql.
func (e *env) offline(ctx context.Context) (float64, error) {
	dstDSN, err := e.newTarget(ctx, "offline")
	if err != nil {
		return 0, err
	}
	psql := func(sql string) error {
		argv := onCPUs(targetCPUs, e.src.Bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dstDSN, "-c", sql)
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("psql: %v: %s", err, out)
		}
		return nil
	}
	start := time.Now()
	if err := psql(benchSchema); err != nil {
		return 0, err
	}
	if _, err := e.psqlPipe(ctx, dstDSN); err != nil {
		return 0, err
	}
	if err := psql(benchKeys); err != nil {
		return 0, err
	}
	return time.Since(start).Seconds(), nil
}

// promoteOnce runs `promoted promote` of a tenant to the end and returns
// its wall time and the log lines it reported: the copy, the keys, the
// verifications and the cutover.
func (e *env) promoteOnce(ctx context.Context, tenant string) (float64, map[string]map[string]any, error) {
	start := time.Now()
	d, _, err := e.startPromote(ctx, tenant)
	if err != nil {
		return 0, nil, err
	}
	lines, err := d.finished()
	return time.Since(start).Seconds(), lines, err
}

// startPromote starts `promoted promote` of a tenant into a fresh target
// and returns the daemon and the target's superuser DSN.
func (e *env) startPromote(ctx context.Context, tenant string) (*daemon, string, error) {
	dstDSN, err := e.newTarget(ctx, "promote")
	if err != nil {
		return nil, "", err
	}
	d, err := startDaemon(ctx, e.bin, "promote", "--source", e.srcMover, "--target", e.mover(dstDSN), "--tenant", tenant,
		"--tables", strings.Join(benchTables, ","), "--cutover-timeout", "10s")
	return d, dstDSN, err
}

// finished waits for a daemon to exit and returns its log lines by
// message, or its log's tail when it failed.
func (d *daemon) finished() (map[string]map[string]any, error) {
	<-d.done
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		return nil, fmt.Errorf("%s exited %d: %s", d.cmd.Args[0], code, d.tail())
	}
	lines := map[string]map[string]any{}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.lines {
		if m, ok := l["msg"].(string); ok {
			lines[m] = l
		}
	}
	return lines, nil
}
