package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// neighbourRun is the other tenants' load during one move (or alone):
// their throughput and p99 latency while the move ran, how long the move
// took until its copy was caught up, how many of their transactions it
// cost against the control's rate over that time (what a move costs them
// as a whole: one that hurts them more for less time can cost them less),
// and where the source's CPU went meanwhile.
type neighbourRun struct {
	tps, p99 float64
	secs     float64
	lost     float64
	finished bool
	cpu      cpuSplit
}

// String is the run in one line for the bench's log.
func (n neighbourRun) String() string {
	state := "caught up"
	if !n.finished {
		state = "not caught up when the load ended"
	}
	return fmt.Sprintf("%.0f tps, p99 %.1f ms over %.1f s (%s), %.0f of their transactions lost; source CPU: %s", n.tps, n.p99, n.secs, state, n.lost, n.cpu)
}

// neighbours runs the other tenants' load alone for the size's load
// duration, then during three moves of tenant 1, each measured from its
// start until it is caught up: promoted's replicate, the same told to
// spare the neighbours, and a native subscription.
func (e *env) neighbours(ctx context.Context, othersScript string) (control, prom, gentle, nat neighbourRun, err error) {
	dir, err := os.MkdirTemp("", "promoted-bench-")
	if err != nil {
		return
	}
	defer os.RemoveAll(dir)
	cpu, err := sampleSourceCPU(filepath.Join(e.src.Dir, "data"))
	if err != nil {
		return
	}
	r, err := e.pgbench(ctx, dir, "-T", fmt.Sprint(int(e.size.Load.Seconds())), "-f", othersScript)
	control = neighbourRun{tps: r.tps, p99: percentile(r.latencies, 0.99), secs: e.size.Load.Seconds(), finished: true, cpu: cpu.finish()}
	if err != nil {
		return
	}
	promoted := func(extra ...string) func(ctx context.Context, until time.Time) (func(), error) {
		return func(ctx context.Context, until time.Time) (func(), error) {
			dstDSN, err := e.newTarget(ctx, "neighbour")
			if err != nil {
				return nil, err
			}
			args := append([]string{"replicate", "--source", e.srcMover, "--sink", e.mover(dstDSN), "--tenant", "1", "--tables", strings.Join(benchTables, ",")}, extra...)
			d, err := startDaemon(ctx, e.bin, args...)
			if err != nil {
				return nil, err
			}
			stop := func() { d.stop(); runCancel(e.bin, e.srcMover) }
			_, err = d.waitLine(ctx, "streaming", time.Until(until))
			return stop, err
		}
	}
	if prom, err = e.duringMove(ctx, othersScript, control.tps, promoted()); err != nil {
		return
	}
	// The same move told to spare the neighbours: one copy worker at a
	// limited rate.
	if gentle, err = e.duringMove(ctx, othersScript, control.tps, promoted("--parallel", "1", "--copy-max-rate", "10")); err != nil {
		return
	}
	nat, err = e.duringMove(ctx, othersScript, control.tps, func(ctx context.Context, until time.Time) (func(), error) {
		n, err := e.newNative(ctx, true)
		if err != nil {
			return nil, err
		}
		return func() { n.drop(context.Background()) }, n.synced(ctx, time.Until(until))
	})
	return
}

// duringMove runs the other tenants' pgbench, starts a move a second
// later, and measures their transactions that ended between the move's
// start and its catching up (or the load's end, a generous six load
// durations later). pgbench is interrupted once the move is caught up:
// its log, flushed up to its last few transactions, covers the window.
func (e *env) duringMove(ctx context.Context, othersScript string, controlTPS float64, move func(ctx context.Context, until time.Time) (func(), error)) (neighbourRun, error) {
	dir, err := os.MkdirTemp("", "promoted-bench-")
	if err != nil {
		return neighbourRun{}, err
	}
	defer os.RemoveAll(dir)
	window := 6*e.size.Load + 10*time.Second
	argv := e.pgbenchArgv(dir, "-T", fmt.Sprint(int(window.Seconds())), "-f", othersScript)
	load := execCommand(argv[0], argv[1:]...)
	load.Dir = os.TempDir()
	if err := load.Start(); err != nil {
		return neighbourRun{}, fmt.Errorf("pgbench: %w", err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()
	end := time.Now().Add(window)
	time.Sleep(time.Second)

	cpu, err := sampleSourceCPU(filepath.Join(e.src.Dir, "data"))
	if err != nil {
		load.Process.Kill()
		<-loadDone
		return neighbourRun{}, err
	}
	t0 := time.Now()
	stop, moveErr := move(ctx, end.Add(-2*time.Second))
	t1 := time.Now()
	split := cpu.finish()
	finished := moveErr == nil
	if moveErr != nil && time.Now().Before(end.Add(-2*time.Second)) {
		// The move failed, rather than running out of time.
		if stop != nil {
			stop()
		}
		load.Process.Kill()
		<-loadDone
		return neighbourRun{}, moveErr
	}
	time.Sleep(1500 * time.Millisecond)
	load.Process.Signal(os.Interrupt)
	<-loadDone
	if stop != nil {
		stop()
	}
	var n int
	var lat []float64
	from, to := float64(t0.UnixNano())/1e9, float64(t1.UnixNano())/1e9
	for _, x := range readTxLog(dir) {
		if x.end >= from && x.end <= to {
			n++
			lat = append(lat, x.ms)
		}
	}
	secs := t1.Sub(t0).Seconds()
	if n == 0 {
		return neighbourRun{}, fmt.Errorf("the other tenants' pgbench logged no transaction during the move")
	}
	return neighbourRun{tps: float64(n) / secs, p99: percentile(lat, 0.99), secs: secs, lost: controlTPS*secs - float64(n), finished: finished, cpu: split}, nil
}
