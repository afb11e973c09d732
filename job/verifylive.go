package job

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/verify"
)

// ErrVerifyBusy is returned by VerifyLive while another verification of
// the move runs: verifications hold the apply at one point each, so they
// take turns.
var ErrVerifyBusy = errors.New("a verification of this move is already running: wait for it to finish, then ask again")

// VerifyLive compares the target with the source at one consistent point
// while the move streams, without blocking the tenant's writes: a
// temporary slot exports a source snapshot at its consistent point, the
// apply pauses exactly there, both sides are compared, and the apply
// resumes. It needs the catch-up to be running, and refuses with
// ErrVerifyBusy while another verification runs.
func (j *Job) VerifyLive(ctx context.Context) (*verify.Result, error) {
	select {
	case j.verifying <- struct{}{}:
	default:
		return nil, ErrVerifyBusy
	}
	defer func() { <-j.verifying }()
	return j.verifyAt(ctx, false)
}

// verifyTurn waits for any other verification to end, then runs verifyAt.
func (j *Job) verifyTurn(ctx context.Context, track bool) (*verify.Result, error) {
	select {
	case j.verifying <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-j.verifying }()
	return j.verifyAt(ctx, track)
}

// verifyAt is VerifyLive without taking turns; with track, the sink
// records every row it changes after the verified point, for the
// cutover's re-check.
func (j *Job) verifyAt(ctx context.Context, track bool) (*verify.Result, error) {
	return j.atConsistentPoint(ctx, func(ctx context.Context, tx pgx.Tx, dst *pgx.Conn, lsn promoted.LSN) (*verify.Result, error) {
		if track {
			j.mu.Lock()
			sink := j.sink
			j.mu.Unlock()
			sink.StartTracking()
		}
		j.log.Info("verifying at a consistent point", "stage", "verify", "lsn", lsn.String())
		res, err := verify.Compare(ctx, tx, dst, j.plan.Tables, verify.Options{})
		if err != nil {
			return nil, err
		}
		j.log.Info("verified", "stage", "verify", "rows", res.Rows, "equal", res.Equal(), "ms", res.Duration.Milliseconds())
		return res, nil
	})
}

// atConsistentPoint runs compare with the source seen at one point of its
// WAL (tx, a snapshot exported by a temporary slot) and the target held
// exactly there (the apply pauses at that point until compare returns).
func (j *Job) atConsistentPoint(ctx context.Context, compare func(ctx context.Context, tx pgx.Tx, dst *pgx.Conn, at promoted.LSN) (*verify.Result, error)) (*verify.Result, error) {
	j.mu.Lock()
	g := j.gate
	j.mu.Unlock()
	if g == nil || j.Phase() != "catchup" {
		return nil, errors.New("the move is not streaming yet: verify once the snapshot is copied")
	}
	g.Hold()
	defer g.Resume()
	repl, err := snapshot.ConnectReplication(ctx, j.cfg.SourceDSN, j.cfg.SlotTimeout)
	if err != nil {
		return nil, err
	}
	defer repl.Close(context.Background())
	slot, err := snapshot.CreateTemporarySlot(ctx, repl, fmt.Sprintf("promoted_v_%s_%d", j.ID, time.Now().UnixNano()%1e6))
	if err != nil {
		return nil, err
	}
	src, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-verify")
	if err != nil {
		return nil, err
	}
	defer src.Close(context.Background())
	// A transaction after the pause point, so a quiet stream still
	// delivers something that proves the point was passed.
	if _, err := src.Exec(ctx, "SELECT pg_logical_emit_message(true, 'promoted-verify', '')"); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	tx, err := db.BeginAt(ctx, src, slot.SnapshotName)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer tx.Rollback(context.Background())
	dst, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted-verify")
	if err != nil {
		return nil, err
	}
	defer dst.Close(context.Background())
	reached := g.StopAt(slot.ConsistentPoint)
	select {
	case <-reached:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(10 * time.Minute):
		return nil, fmt.Errorf("verify: the apply did not reach %s within 10 minutes: the lag is too high to verify now", slot.ConsistentPoint)
	}
	return compare(ctx, tx, dst, slot.ConsistentPoint)
}

// errVerified stops a verify-only run once it has its result.
var errVerified = errors.New("verified")

// verifyOnce runs one live verification as soon as the catch-up streams,
// for `promoted verify`, then stops the stream.
func (j *Job) verifyOnce(ctx context.Context) error {
	res, err := j.verifyTurn(ctx, false)
	if err != nil {
		return err
	}
	j.verified = res
	return errVerified
}

// Verified is the result of a verify-only run.
func (j *Job) Verified() *verify.Result { return j.verified }
