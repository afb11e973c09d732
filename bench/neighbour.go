package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// neighbourRun is the other tenants' throughput and p99 latency.
type neighbourRun struct {
	tps, p99 float64
}

// neighbours runs the other tenants' load for the size's load duration
// three times: alone, while promoted copies and streams the moving
// tenant, and while a native subscription does the same.
func (e *env) neighbours(ctx context.Context, othersScript string) (control, prom, gentle, nat neighbourRun, err error) {
	run := func() (neighbourRun, error) {
		dir, err := os.MkdirTemp("", "promoted-bench-")
		if err != nil {
			return neighbourRun{}, err
		}
		defer os.RemoveAll(dir)
		r, err := e.pgbench(ctx, dir, "-T", fmt.Sprint(int(e.size.Load.Seconds())), "-f", othersScript)
		return neighbourRun{tps: r.tps, p99: percentile(r.latencies, 0.99)}, err
	}
	if control, err = run(); err != nil {
		return
	}
	move := func(extra ...string) (neighbourRun, error) {
		dstDSN, err := e.newTarget(ctx, "neighbour")
		if err != nil {
			return neighbourRun{}, err
		}
		args := append([]string{"replicate", "--source", e.srcMover, "--sink", e.mover(dstDSN), "--tenant", "1", "--tables", strings.Join(benchTables, ",")}, extra...)
		d, err := startDaemon(ctx, e.bin, args...)
		if err != nil {
			return neighbourRun{}, err
		}
		time.Sleep(200 * time.Millisecond)
		r, err := run()
		d.stop()
		runCancel(e.bin, e.srcMover)
		return r, err
	}
	if prom, err = move(); err != nil {
		return
	}
	// The same move told to spare the neighbours: one copy worker at a
	// limited rate.
	if gentle, err = move("--parallel", "1", "--copy-max-rate", "10"); err != nil {
		return
	}
	n, err := e.newNative(ctx, true)
	if err != nil {
		return
	}
	defer n.drop(context.Background())
	nat, err = run()
	return
}
