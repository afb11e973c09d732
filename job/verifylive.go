package job

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/verify"
)

// gate sits between the stream and the PostgreSQL sink so live
// verification can stop the apply exactly at an LSN: every transaction
// that committed before it is applied and durable, none after it is. It
// holds the apply first and learns the point afterwards, because the point
// (a new slot's consistent point) lies after every transaction the stream
// has already received, and the target must not run past it meanwhile.
type gate struct {
	*apply.Postgres

	mu      sync.Mutex
	at      promoted.LSN  // 0: open; holdAll: hold until the point is known
	updated chan struct{} // closed when at changes from holdAll
	reached chan struct{}
	release chan struct{}
}

const holdAll = promoted.LSN(^uint64(0))

func newGate(p *apply.Postgres) *gate { return &gate{Postgres: p} }

// Apply holds back the first transaction that committed at or after the
// pause point, after making everything before it durable.
func (g *gate) Apply(ctx context.Context, txn *promoted.Txn) error {
	for {
		g.mu.Lock()
		at, updated, reached, release := g.at, g.updated, g.reached, g.release
		g.mu.Unlock()
		switch {
		case at == 0:
			return g.Postgres.Apply(ctx, txn)
		case at == holdAll:
			select {
			case <-updated:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if txn.Heartbeat() {
			// Nothing of the tenant before EndLSN: once that reaches the
			// point the target holds exactly the tenant's state there.
			if err := g.Postgres.Apply(ctx, txn); err != nil || txn.EndLSN < at {
				return err
			}
		} else if txn.FinalLSN < at {
			return g.Postgres.Apply(ctx, txn)
		}
		if err := g.Postgres.Flush(ctx); err != nil {
			return err
		}
		select {
		case <-reached:
		default:
			close(reached)
		}
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		if txn.Heartbeat() {
			return nil
		}
		return g.Postgres.Apply(ctx, txn)
	}
}

// hold stops the apply before its next transaction until stopAt or
// resume.
func (g *gate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.at, g.updated, g.reached, g.release = holdAll, make(chan struct{}), make(chan struct{}), make(chan struct{})
}

// stopAt lets the apply run up to lsn; the returned channel closes when
// it is there.
func (g *gate) stopAt(lsn promoted.LSN) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.at = lsn
	close(g.updated)
	return g.reached
}

func (g *gate) resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.at == holdAll {
		close(g.updated)
	}
	if g.release != nil {
		close(g.release)
	}
	g.at, g.updated, g.reached, g.release = 0, nil, nil, nil
}

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
	j.mu.Lock()
	g := j.gate
	j.mu.Unlock()
	if g == nil || j.Phase() != "catchup" {
		return nil, errors.New("the move is not streaming yet: verify once the snapshot is copied")
	}
	g.hold()
	defer g.resume()
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
	tx, err := src.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+promoted.QuoteLiteral(slot.SnapshotName)); err != nil {
		return nil, fmt.Errorf("verify: import snapshot: %w", err)
	}
	dst, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted-verify")
	if err != nil {
		return nil, err
	}
	defer dst.Close(context.Background())
	reached := g.stopAt(slot.ConsistentPoint)
	select {
	case <-reached:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(10 * time.Minute):
		return nil, fmt.Errorf("verify: the apply did not reach %s within 10 minutes: the lag is too high to verify now", slot.ConsistentPoint)
	}
	if track {
		g.Postgres.StartTracking()
	}
	j.log.Info("verifying at a consistent point", "stage", "verify", "lsn", slot.ConsistentPoint.String())
	res, err := verify.Compare(ctx, tx, dst, j.plan.Tables, verify.Options{})
	if err != nil {
		return nil, err
	}
	j.log.Info("verified", "stage", "verify", "rows", res.Rows, "equal", res.Equal(), "ms", res.Duration.Milliseconds())
	return res, nil
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
