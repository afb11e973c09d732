package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// lagRun is the replication lag sampled under a steady load, and the
// catch-up once the load stops.
type lagRun struct {
	bytes, secs []float64
	catchup     float64
}

// sampleLag runs pgbench at a fixed rate for the size's load duration
// while sampling the source's WAL position and applied() on the target,
// every 20 ms on one session each (a session per sample would fork
// backends on both clusters 50 times a second); lag in seconds is how
// long ago the source was at the applied position.
func (e *env) sampleLag(ctx context.Context, tenantScript, othersScript string, applied func(context.Context, *pgx.Conn) (promoted.LSN, error), dstDSN string) (lagRun, error) {
	type point struct {
		at  time.Time
		lsn promoted.LSN
	}
	var (
		mu      sync.Mutex
		history []point
		r       lagRun
	)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var src, dst *pgx.Conn
		defer func() {
			for _, c := range []*pgx.Conn{src, dst} {
				if c != nil {
					c.Close(context.Background())
				}
			}
		}()
		for sctx.Err() == nil {
			var err error
			if src == nil {
				src, err = connect(sctx, e.srcMover)
			}
			if dst == nil && err == nil {
				dst, err = connect(sctx, dstDSN)
			}
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			now := time.Now()
			cur, err1 := lsnOn(sctx, src, "SELECT pg_current_wal_lsn()::text")
			a, err2 := applied(sctx, dst)
			if err1 != nil {
				src.Close(context.Background())
				src = nil
			}
			if err2 != nil {
				dst.Close(context.Background())
				dst = nil
			}
			if err1 == nil && err2 == nil && a > 0 {
				mu.Lock()
				history = append(history, point{now, cur})
				lagB := float64(0)
				if cur > a {
					lagB = float64(cur - a)
				}
				lagS := 0.0
				for _, p := range history {
					if p.lsn >= a {
						lagS = now.Sub(p.at).Seconds()
						break
					}
				}
				r.bytes = append(r.bytes, lagB)
				r.secs = append(r.secs, lagS)
				mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	_, err := e.pgbench(ctx, "", "-R", "200", "-T", fmt.Sprint(int(e.size.Load.Seconds())), "-f", tenantScript, "-f", othersScript)
	stop()
	<-done
	if err != nil {
		return r, err
	}
	marker, err := e.insertMarker(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	if err := waitRow(ctx, dstDSN, marker, 10*time.Minute); err != nil {
		return r, err
	}
	r.catchup = time.Since(start).Seconds()
	return r, nil
}

// lag measures promoted and then the native subscriber under the same
// steady load.
func (e *env) lag(ctx context.Context, tenantScript, othersScript string) (prom, nat lagRun, err error) {
	dstDSN, err := e.newTarget(ctx, "lag")
	if err != nil {
		return prom, nat, err
	}
	d, err := startDaemon(ctx, e.bin, "replicate", "--source", e.srcMover, "--sink", e.mover(dstDSN), "--tenant", "1", "--tables", strings.Join(benchTables, ","))
	if err != nil {
		return prom, nat, err
	}
	if _, err := d.waitLine(ctx, "streaming", 30*time.Minute); err != nil {
		d.stop()
		return prom, nat, err
	}
	prom, err = e.sampleLag(ctx, tenantScript, othersScript, func(ctx context.Context, conn *pgx.Conn) (promoted.LSN, error) {
		return lsnOn(ctx, conn, appliedQuery)
	}, dstDSN)
	d.stop()
	runCancel(e.bin, e.srcMover)
	if err != nil {
		return prom, nat, err
	}
	n, err := e.newNative(ctx, true)
	if err != nil {
		return prom, nat, err
	}
	defer n.drop(context.Background())
	if err := n.synced(ctx, 30*time.Minute); err != nil {
		return prom, nat, err
	}
	nat, err = e.sampleLag(ctx, tenantScript, othersScript, n.applied, n.dstDSN)
	return prom, nat, err
}
