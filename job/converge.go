package job

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/verify"
)

// maxRounds bounds the re-checks before the fence: each one re-compares
// the rows written during the one before, so they shrink quickly to what a
// few seconds of the tenant's writes touch.
const maxRounds = 3

// converge narrows what the check under the fence must re-compare. After
// the full verification, every row the tenant writes is recorded, and the
// catch-up that follows can take minutes on a large tenant: re-comparing
// all of those rows under the fence would block the tenant's writes for
// as long as the catch-up took. So, before the fence, each round starts a
// new epoch of the recording, waits out the transactions older than it,
// and re-compares at a new consistent point (the apply held there) the
// rows recorded in the older epochs and those the sink changed since the
// last point. The check under the fence then covers only the last epoch
// and what the sink changed after the last point. A round that finds a
// difference stops the move before the fence, like the full verification.
//
// Why nothing is missed: at the round's point every row not written since
// the last point is as it was verified there on both sides; every row
// written on the source since then was recorded (in the older epochs if
// re-compared now, in the new one if re-compared under the fence, since
// every transaction that could still record an older epoch has ended
// before the point), and every row the sink changed is in its own list.
func (j *Job) converge(ctx context.Context, src *pgx.Conn, sink *apply.Postgres) error {
	for round := 1; round <= maxRounds; round++ {
		epoch, err := state.NextEpoch(ctx, src, j.ID)
		if err != nil {
			return err
		}
		bctx, cancel := context.WithTimeout(ctx, 2*j.cfg.Cutover.Timeout)
		err = cutover.Barrier(bctx, src)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Still correct: the check under the fence keeps covering
			// every epoch since the last round that finished.
			j.log.Warn("transactions older than the new tracking epoch are still open: the check under the fence covers everything written since the last re-check", "stage", "cutover", "err", err)
			return nil
		}
		res, err := j.recheck(ctx, src, sink, epoch)
		if err != nil {
			return err
		}
		j.rounds = append(j.rounds, res)
		if !res.Equal() {
			return fmt.Errorf("the target differs from the source before the fence, so no cutover was tried: %s", strings.ReplaceAll(res.Summary(), "\n", "; "))
		}
		j.epoch = epoch
		if err := state.DeleteChangedBefore(ctx, src, j.ID, epoch); err != nil {
			return err
		}
		j.log.Info("re-checked the rows written since the last check, before the fence", "stage", "cutover", "round", round, "rows", res.Rows, "ms", res.Duration.Milliseconds())
		if res.Rows < 1000 || res.Duration < j.cfg.Cutover.Timeout/20 {
			return nil
		}
	}
	return nil
}

// recheck is one round of converge, at a new consistent point, taking
// turns with other verifications.
func (j *Job) recheck(ctx context.Context, src *pgx.Conn, sink *apply.Postgres, epoch int) (*verify.Result, error) {
	select {
	case j.verifying <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-j.verifying }()
	return j.atConsistentPoint(ctx, func(ctx context.Context, tx pgx.Tx, dst *pgx.Conn, at promoted.LSN) (*verify.Result, error) {
		start := time.Now()
		touched := sink.Touched()
		sink.StartTracking()
		n, err := state.ChangedCount(ctx, src, j.ID, epoch)
		if err != nil {
			return nil, err
		}
		var res *verify.Result
		if j.wholeRecheck(n, touched) {
			j.log.Info("the tenant wrote too many rows for a re-check by key: comparing everything", "stage", "cutover", "written", n, "applied", touched.Len())
			res, err = verify.Compare(ctx, tx, dst, j.plan.Tables, verify.Options{})
		} else {
			var written map[string][][]string
			if written, err = state.ChangedKeysBefore(ctx, src, j.ID, epoch); err == nil {
				res, err = j.compareKeys(ctx, tx, dst, touched, written)
			}
		}
		if err != nil {
			return nil, err
		}
		res.Duration = time.Since(start)
		return res, nil
	})
}

// wholeRecheck reports whether a re-check compares every row rather than
// the rows written and applied: when the sink could not keep every key it
// applied, or when there are so many (a tenth of the tenant, and at least
// ten thousand) that looking each one up costs more than a full scan. The
// first re-check after the copy's check covers everything written during
// the copy, which for a busy tenant can be most of its rows.
func (j *Job) wholeRecheck(written int64, touched apply.Touched) bool {
	if !touched.Complete() {
		return true
	}
	var rows int64
	if j.preVerified != nil {
		rows = j.preVerified.Rows
	}
	return written+int64(touched.Len()) > max(10_000, rows/10)
}
