package job

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/stream"
)

// The catch-up: streaming from the slot into the sink, with progress
// reports and the retained-WAL watch beside it.

// catchup streams from the slot into the target from from until the move
// ends: a promotion's or demotion's cutover, a verify-only run's
// verification, or a replica's stop.
func (j *Job) catchup(ctx context.Context, repl *pgconn.PgConn, from promoted.LSN) error {
	applyConn, err := apply.Connect(ctx, j.cfg.TargetDSN)
	if err != nil {
		return err
	}
	fetcher := snapshot.NewFetcher(j.cfg.SourceDSN)
	if j.FetchWait > 0 {
		fetcher.Wait = j.FetchWait
	}
	defer fetcher.Close(context.Background())
	sink := apply.NewPostgres(j.cfg.Apply, applyConn, j.ID, from, fetcher, j.cfg.Tenant, j.log.With("stage", "apply"))
	sink.Lose = j.Hooks.Lose
	sink.Bypass = j.cfg.Rollback
	sink.Evolve = j.follows()
	if j.copyChecked {
		// Every row the sink changes from the first change on is
		// re-checked before the cutover (the copy's check).
		sink.StartTracking()
	}
	defer sink.Close(context.Background())
	gated := apply.NewGate(sink)
	scfg := j.cfg.Stream
	scfg.Slot, scfg.Publication = j.names.Slot, j.names.Publication
	if j.follows() {
		scfg.Evolve = j.addedColumn(nil)
	}
	st, err := stream.New(scfg, repl, j.plan.Tables, j.log.With("stage", "stream"))
	if err != nil {
		return err
	}
	j.mu.Lock()
	j.sink, j.stream, j.gate = sink, st, gated
	j.mu.Unlock()
	if err := j.startCatchup(ctx, !j.cfg.VerifyOnly); err != nil {
		return err
	}
	var also []func(context.Context) error
	if j.cfg.Promote {
		also = append(also, func(ctx context.Context) error { return j.cutover(ctx, st, sink) })
	}
	if j.cfg.VerifyOnly {
		also = append(also, j.verifyOnce)
	}
	err = j.budgetErr(j.runStream(ctx, st, from, gated, also...))
	if errors.Is(err, errVerified) {
		return nil
	}
	if errors.Is(err, errFlipped) {
		return j.finish(ctx)
	}
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// startCatchup enters the catch-up phase: said, recorded on the source
// (unless record is false, for a verify-only run) and hooked.
func (j *Job) startCatchup(ctx context.Context, record bool) error {
	j.setPhase("catchup")
	if record {
		if err := j.recordPhase(ctx, state.PhaseCatchup); err != nil {
			return err
		}
	}
	if j.Hooks.Streaming != nil {
		j.Hooks.Streaming()
	}
	return nil
}

// runStream streams from the slot into sink until something fails or ctx
// ends, with the progress reports and the retained-WAL watch beside it,
// and also whatever the caller adds (the cutover, a verification).
func (j *Job) runStream(ctx context.Context, st *stream.Stream, from promoted.LSN, sink promoted.Sink, also ...func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	stop := j.reportProgress(gctx)
	defer stop()
	g.Go(func() error { return st.Run(gctx, from, sink) })
	g.Go(func() error { return j.watchSlot(gctx, j.watchInterval()) })
	for _, f := range also {
		g.Go(func() error { return f(gctx) })
	}
	return g.Wait()
}

// recordPhase notes the phase in the move's record on the source.
func (j *Job) recordPhase(ctx context.Context, phase string) error {
	return state.SetJobPhase(ctx, j.src, j.ID, phase, "", nil)
}

// reportProgress logs progress and updates gauges until stopped. A
// catch-up whose applied position stands still while the source moves on
// is reported as stalled, never printed as ordinary progress.
func (j *Job) reportProgress(ctx context.Context) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(j.cfg.ProgressInterval)
		defer t.Stop()
		// The lag clock's resolution: how often the source's WAL end is
		// sampled.
		lagTick := time.NewTicker(200 * time.Millisecond)
		defer lagTick.Stop()
		var last promoted.LSN
		since := time.Now()
		var rec *pgx.Conn // the session that records the copy's progress
		defer func() {
			if rec != nil {
				rec.Close(context.Background())
			}
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-lagTick.C:
				j.sampleLag()
				continue
			case <-t.C:
			}
			switch j.Phase() {
			case "snapshot":
				if !j.cfg.LiveProgress {
					j.log.Info("progress", "stage", "snapshot", "rows_copied", j.RowsCopied())
				}
				rec = j.record(ctx, rec, "the copy's progress", func(c *pgx.Conn) error {
					p := j.Progress()
					if p.RowsCopied == 0 {
						return nil
					}
					return state.SetJobRows(ctx, c, j.ID, p.RowsCopied, p.RowsEstimated)
				})
			case "catchup":
				lag, applied := j.Lag(), j.Applied()
				lagS := j.lagSeconds(lag, applied)
				j.m.lag.Set(float64(lag))
				j.m.lagSeconds.Set(lagS)
				rec = j.record(ctx, rec, "the catch-up's lag", func(c *pgx.Conn) error { return state.SetJobLag(ctx, c, j.ID, lagS) })
				if applied != last || lag == 0 {
					last, since = applied, time.Now()
				}
				stalled := time.Since(since)
				if stalled < j.stallAfter() {
					j.m.stalled.Set(0)
					if !j.cfg.LiveProgress {
						j.log.Info("progress", "stage", "catchup", "applied_lsn", applied.String(), "lag_bytes", lag, "lag_seconds", math.Round(lagS*10)/10)
					}
					continue
				}
				j.m.stalled.Set(stalled.Seconds())
				if len(j.verifying) > 0 {
					j.log.Warn("the apply is paused for a verification", "stage", "catchup", "paused_s", int64(stalled.Seconds()), "lag_bytes", lag)
				} else {
					j.log.Warn("the apply has made no progress while the source moves on: the target may be locked or unreachable, and the slot retains WAL meanwhile", "stage", "catchup", "stalled_s", int64(stalled.Seconds()), "applied_lsn", applied.String(), "lag_bytes", lag)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// record writes what for status into the move's record on the source, on
// a session of its own (the job's is busy elsewhere), opened on first use
// and dropped after a failure: progress is a report, and a failed write is
// retried at the next tick, never a reason to stop.
func (j *Job) record(ctx context.Context, rec *pgx.Conn, what string, write func(*pgx.Conn) error) *pgx.Conn {
	var err error
	if rec == nil {
		if rec, err = db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-progress"); err != nil {
			j.log.Debug("record "+what, "err", err)
			return nil
		}
	}
	if err = write(rec); err != nil {
		j.log.Debug("record "+what, "err", err)
		rec.Close(context.Background())
		return nil
	}
	return rec
}
