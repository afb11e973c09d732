package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

func connect(ctx context.Context, dsn string) (*pgx.Conn, error) { return pgx.Connect(ctx, dsn) }

// native is PostgreSQL's own logical replication of the moving tenant: a
// row-filtered publication and a subscription on a target database that
// has the tables and their keys.
type native struct {
	e            *env
	dstDSN, name string
}

func (e *env) newNative(ctx context.Context, copyData bool) (*native, error) {
	return e.newNativeInto(ctx, copyData, benchSchema+benchKeys)
}

// newNativeInto subscribes a new target made by ddl.
func (e *env) newNativeInto(ctx context.Context, copyData bool, ddl string) (*native, error) {
	dstDSN, err := e.newTarget(ctx, "native")
	if err != nil {
		return nil, err
	}
	if err := exec1(ctx, dstDSN, ddl); err != nil {
		return nil, err
	}
	n := &native{e: e, dstDSN: dstDSN, name: fmt.Sprintf("native_%d", e.dbs)}
	var filtered []string
	for _, t := range benchTables {
		filtered = append(filtered, fmt.Sprintf("%s WHERE (%s)", t, tenantWhere))
	}
	if err := exec1(ctx, e.pooled.Owner, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", n.name, strings.Join(filtered, ", "))); err != nil {
		return nil, err
	}
	conninfo := strings.ReplaceAll(e.srcMover, "'", "")
	if err := exec1(ctx, dstDSN, fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION '%s' PUBLICATION %s WITH (copy_data = %v)", n.name, conninfo, n.name, copyData)); err != nil {
		return nil, err
	}
	return n, nil
}

// synced waits until the initial copy of every table is done.
func (n *native) synced(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, n.dstDSN, timeout, func(conn *pgx.Conn) (bool, error) {
		var pending int64
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'").Scan(&pending)
		return err == nil && pending == 0, err
	}, fmt.Sprintf("native subscription %s did not finish its initial copy within %s", n.name, timeout))
}

func (n *native) enable(ctx context.Context, on bool) error {
	verb := "DISABLE"
	if on {
		verb = "ENABLE"
	}
	return exec1(ctx, n.dstDSN, fmt.Sprintf("ALTER SUBSCRIPTION %s %s", n.name, verb))
}

// applied is the end LSN of the last source transaction the subscriber
// applied (its replication origin's progress).
func (n *native) applied(ctx context.Context, conn *pgx.Conn) (promoted.LSN, error) {
	return lsnOn(ctx, conn, `SELECT remote_lsn::text FROM pg_replication_origin_status
	    WHERE external_id = 'pg_' || (SELECT oid FROM pg_subscription WHERE subname = $1)`, n.name)
}

func (n *native) drop(ctx context.Context) {
	exec1(ctx, n.dstDSN, fmt.Sprintf("DROP SUBSCRIPTION IF EXISTS %s", n.name))
	exec1(ctx, n.e.pooled.Owner, fmt.Sprintf("DROP PUBLICATION IF EXISTS %s", n.name))
}

// drainRun is one backlog drain.
type drainRun struct {
	changes int64
	walMB   float64
	secs    float64
	// src and dst are where each cluster's CPU went during the drain.
	src, dst cpuSplit
}

// String is the run in one line for the bench's log.
func (d drainRun) String() string {
	return fmt.Sprintf("%d changes in %.2f s; source: %s; target: %s, promoted %.1f s", d.changes, d.secs, d.src, d.dst, d.dst.promoted)
}

// sampleBoth samples both clusters' CPU; the returned function ends both.
func (e *env) sampleBoth() (func() (cpuSplit, cpuSplit), error) {
	src, err := sampleCPU(filepath.Join(e.src.Dir, "data"), sourceCPUs)
	if err != nil {
		return nil, err
	}
	dst, err := sampleCPU(filepath.Join(e.dst.Dir, "data"), targetCPUs)
	if err != nil {
		src.finish()
		return nil, err
	}
	return func() (cpuSplit, cpuSplit) { return src.finish(), dst.finish() }, nil
}

// backlog produces the drain backlog on the source: pgbench transactions
// on the moving tenant and, as many, on the others, then a marker row.
// It returns the tenant's row changes, the WAL written and the marker.
func (e *env) backlog(ctx context.Context, tenantScript, othersScript string) (int64, float64, int64, error) {
	before, err := currentLSN(ctx, e.srcMover)
	if err != nil {
		return 0, 0, 0, err
	}
	countBefore, err := e.counted(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	per := e.size.Backlog / 2
	if _, err := e.pgbench(ctx, "", "-t", fmt.Sprint(per), "-f", tenantScript, "-f", othersScript); err != nil {
		return 0, 0, 0, err
	}
	marker, err := e.insertMarker(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	after, err := currentLSN(ctx, e.srcMover)
	if err != nil {
		return 0, 0, 0, err
	}
	countAfter, err := e.counted(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	return countAfter - countBefore, float64(after-before) / 1e6, marker, nil
}

// drain measures promoted and the native subscriber applying the same kind
// of backlog from a stopped state.
func (e *env) drain(ctx context.Context, tenantScript, othersScript string) (prom, nat []drainRun, rss int64, err error) {
	// promoted: caught up, stopped, backlog, restarted.
	dstDSN, err := e.newTarget(ctx, "drain")
	if err != nil {
		return nil, nil, 0, err
	}
	args := []string{"replicate", "--source", e.srcMover, "--sink", e.mover(dstDSN), "--tenant", "1", "--tables", strings.Join(benchTables, ",")}
	d, err := startDaemon(ctx, e.bin, args...)
	if err != nil {
		return nil, nil, 0, err
	}
	if _, err := d.waitLine(ctx, "streaming", 30*time.Minute); err != nil {
		d.stop()
		return nil, nil, 0, err
	}
	d.stop()
	defer runCancel(e.bin, e.srcMover)
	for i := 0; i < e.size.Repeats; i++ {
		changes, wal, marker, err := e.backlog(ctx, tenantScript, othersScript)
		if err != nil {
			return nil, nil, 0, err
		}
		cpu, err := e.sampleBoth()
		if err != nil {
			return nil, nil, 0, err
		}
		start := time.Now()
		d, err := startDaemon(ctx, e.bin, args...)
		if err != nil {
			cpu()
			return nil, nil, 0, err
		}
		err = waitRow(ctx, dstDSN, marker, 30*time.Minute)
		secs := time.Since(start).Seconds()
		src, dst := cpu()
		rss = max(rss, d.peakRSS("catchup"))
		d.stop()
		if err != nil {
			return nil, nil, 0, err
		}
		prom = append(prom, drainRun{changes: changes, walMB: wal, secs: secs, src: src, dst: dst})
	}
	// native: synced, disabled, backlog, enabled.
	n, err := e.newNative(ctx, true)
	if err != nil {
		return nil, nil, 0, err
	}
	defer n.drop(context.Background())
	if err := n.synced(ctx, 30*time.Minute); err != nil {
		return nil, nil, 0, err
	}
	for i := 0; i < e.size.Repeats; i++ {
		if err := n.enable(ctx, false); err != nil {
			return nil, nil, 0, err
		}
		time.Sleep(500 * time.Millisecond) // the apply worker exits
		changes, wal, marker, err := e.backlog(ctx, tenantScript, othersScript)
		if err != nil {
			return nil, nil, 0, err
		}
		cpu, err := e.sampleBoth()
		if err != nil {
			return nil, nil, 0, err
		}
		start := time.Now()
		if err := n.enable(ctx, true); err != nil {
			cpu()
			return nil, nil, 0, err
		}
		err = waitRow(ctx, n.dstDSN, marker, 30*time.Minute)
		secs := time.Since(start).Seconds()
		src, dst := cpu()
		if err != nil {
			return nil, nil, 0, err
		}
		nat = append(nat, drainRun{changes: changes, walMB: wal, secs: secs, src: src, dst: dst})
	}
	return prom, nat, rss, nil
}

// counted is the tenant's bench-order row changes so far (5 per order).
func (e *env) counted(ctx context.Context) (int64, error) {
	conn, err := connect(ctx, e.srcApp)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int64
	err = conn.QueryRow(ctx, "SELECT count(*) * 5 FROM orders WHERE tenant_id = 1 AND note = 'bench order'").Scan(&n)
	return n, err
}
