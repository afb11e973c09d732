package job

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/verify"
)

// The copy's check: a promotion's full comparison, done where it is
// cheapest. Right after the copy the target holds exactly the source at
// the copy's exported snapshot, and nothing has been applied yet. So the
// source is totalled under that snapshot, on the source's own time, while
// the target builds its keys, and the target once they are built. From
// then on, nothing needs comparing in full again: the source has recorded
// the key of every row the tenant wrote since before the snapshot (the
// tracking starts, and the transactions older than it end, before the slot
// is made), and the sink records every row it changes from the first
// change it applies. The re-checks before the fence and the check under it
// compare those rows only (converge, preVerify).

// wantCopyCheck reports whether the move checks its copy at the snapshot:
// a promotion or demotion that verifies before its fence and re-checks by
// key under it. A rollback resumes a stream and never copies.
func (j *Job) wantCopyCheck() bool {
	return j.cfg.Promote && !j.cfg.VerifyOnly && !j.cfg.Rollback && !j.cfg.Cutover.SkipVerify &&
		j.cfg.Cutover.FenceCheck != cutover.CheckFull
}

// fenceRow is the move's row in promoted.fence, which tracks the tenant's
// writes before the cutover and fences them during it.
func (j *Job) fenceRow() state.Fence {
	return state.Fence{Schema: j.cfg.Schema, Tenant: j.plan.Tenant(), JobID: j.ID, Tables: j.plan.TableNames()}
}

// track starts recording the key of every row the tenant writes, and
// waits out the transactions older than the recording, which may write
// without it. It reports false, with the recording stopped, when such a
// transaction stays open past twice --cutover-timeout: the move then
// verifies in full before the fence instead (slower for a large tenant,
// never wrong).
func (j *Job) track(ctx context.Context, src *pgx.Conn) (bool, error) {
	if err := state.Track(ctx, src, j.fenceRow()); err != nil {
		return false, err
	}
	bctx, cancel := context.WithTimeout(ctx, 2*j.cfg.Cutover.Timeout)
	err := cutover.Barrier(bctx, src)
	cancel()
	if err == nil {
		return true, nil
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	j.log.Warn("transactions older than the tracking of the tenant's writes are still open: the move compares every row instead of the rows written", "stage", "verify", "err", err)
	return false, state.StopTracking(ctx, src, j.ID)
}

// sourceTotals is the source's side of the copy check, running beside the
// key builds.
type sourceTotals struct {
	done   chan struct{}
	cancel context.CancelFunc
	totals *verify.Totals
	err    error
	conn   *pgx.Conn
	tx     pgx.Tx
}

// totalSource starts totalling the source under the copy's exported
// snapshot, which stays valid while the slot's replication session is
// idle. The transaction stays open after the totals, for a drill-down.
func (j *Job) totalSource(ctx context.Context, snapshotName string) *sourceTotals {
	ctx, cancel := context.WithCancel(ctx)
	st := &sourceTotals{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(st.done)
		st.conn, st.err = db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-verify")
		if st.err != nil {
			return
		}
		if st.tx, st.err = db.BeginAt(ctx, st.conn, snapshotName); st.err != nil {
			st.err = fmt.Errorf("verify the copy: %w", st.err)
			return
		}
		st.totals, st.err = verify.SourceTotals(ctx, st.tx, j.plan.Tables)
	}()
	return st
}

// close ends the source's side, whether the check is over or was given up
// (its totals are then cancelled), and its transaction and session.
func (st *sourceTotals) close() {
	st.cancel()
	<-st.done
	if st.tx != nil {
		st.tx.Rollback(context.Background())
	}
	if st.conn != nil {
		st.conn.Close(context.Background())
	}
}

// checkCopy totals the target, waits for the source's totals, and compares
// them; a difference stops the move, naming the keys.
func (j *Job) checkCopy(ctx context.Context, st *sourceTotals, dst *pgx.Conn) error {
	start := time.Now()
	d, err := verify.TargetTotals(ctx, dst, j.plan.Tables)
	if err != nil {
		return err
	}
	select {
	case <-st.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if st.err != nil {
		return st.err
	}
	res, err := verify.CompareTotals(ctx, st.tx, dst, st.totals, d, verify.Options{})
	if err != nil {
		return err
	}
	j.log.Info("verified", "stage", "verify", "at", "the copy's snapshot", "rows", res.Rows, "equal", res.Equal(),
		"ms", time.Since(start).Milliseconds(), "source_ms", st.totals.Duration.Milliseconds(), "target_ms", d.Duration.Milliseconds())
	// What a full comparison costs, for preVerify's choice of what to
	// compare under the fence.
	res.Duration = max(st.totals.Duration, d.Duration)
	if !res.Equal() {
		return stop(fmt.Errorf("the copy differs from the source at its snapshot, so the move stopped: %s", strings.ReplaceAll(res.Summary(), "\n", "; ")))
	}
	j.preVerified = res
	j.copyChecked = true
	return nil
}
