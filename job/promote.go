package job

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/stream"
	"github.com/promoted/promoted/verify"
)

// errFlipped stops the stream once the catalog has flipped.
var errFlipped = errors.New("catalog flipped")

// stopError ends the move with an error that reconnecting cannot fix: a
// cutover that failed (and disarmed) is for the operator to rerun, not
// for the catch-up to retry on its own.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

// Fatal marks the error as one the catch-up does not retry.
func (e *stopError) Fatal() bool { return true }

func stop(err error) error { return &stopError{err: err} }

// Summary is what a promotion did, for the report `promote` prints and for
// tests.
type Summary struct {
	// Copied is the rows copied per table by this run's snapshot (empty
	// when the run resumed after the copy).
	Copied     map[string]int64
	RowsCopied int64
	// CopySeconds is how long this run's snapshot copy took.
	CopySeconds float64
	// Changes is the row changes this run applied.
	Changes int64
	Cutover *cutover.Summary
	// AlreadyFlipped is set when an earlier run had flipped the catalog
	// and this run only finished its cleanup of the slot.
	AlreadyFlipped bool
	Version        int64
	// Rounds are the re-checks, before the fence, of the rows written
	// since the full verification (the check under the fence then covers
	// only the writes after the last one).
	Rounds []*verify.Result
	// Rollback is set when the promotion can be rolled back (until its
	// cleanup): a slot on the target records the tenant's writes there.
	Rollback bool
	// Spread counts the target sequences a promotion started 2^40 ahead
	// of the pooled ones (cutover.SpreadIDs).
	Spread int
}

// Summary returns the promotion's summary once Run has returned nil.
func (j *Job) Summary() *Summary { return j.summary }

// catalog opens the catalog database (the source by default).
func (j *Job) catalog(ctx context.Context) (*state.Catalog, error) {
	dsn := j.cfg.Cutover.CatalogDSN
	if dsn == "" {
		dsn = j.cfg.SourceDSN
	}
	conn, err := db.Open(ctx, db.Catalog, dsn, "promoted")
	if err != nil {
		return nil, err
	}
	return &state.Catalog{Conn: conn, DSN: dsn, FlipSQL: j.cfg.Cutover.FlipSQL}, nil
}

// preparePromote settles what an earlier, interrupted run left (a flip
// that committed, or a fence still armed), then installs the fence
// triggers and reads the catalog entry. It reports done when the move had
// already flipped.
func (j *Job) preparePromote(ctx context.Context, src *pgx.Conn) (bool, error) {
	cat, err := j.catalog(ctx)
	if err != nil {
		return false, err
	}
	defer cat.Conn.Close(context.Background())
	tenant := j.plan.Tenant()
	if j.entry, err = cat.Prepare(ctx, tenant, db.Redact(j.cfg.SourceDSN), j.cfg.Schema); err != nil {
		return false, err
	}
	// Flipped waits for a flip transaction still in flight, so an
	// earlier run's flip is never taken for one that did not happen.
	flipped, version, err := cat.Flipped(ctx, j.ID)
	if err != nil {
		return false, err
	}
	if flipped {
		j.log.Warn("an earlier run flipped the catalog: finishing its cleanup of the slot and publication", "stage", "cutover", "version", version)
		j.summary = &Summary{AlreadyFlipped: true, Version: version}
		return true, j.finish(ctx)
	}
	armed, _, err := state.FenceArmed(ctx, src, j.ID)
	if err != nil {
		return false, err
	}
	// The catalog did not flip, so the source is still authoritative: let
	// the tenant write again before anything else (and stop any tracking
	// an earlier run left).
	if err := state.DisarmFence(ctx, src, j.cfg.Schema, tenant, j.ID); err != nil {
		return false, err
	}
	if armed {
		j.log.Warn("an earlier run stopped during the cutover before the flip: fence disarmed, the source stays authoritative", "stage", "cutover")
	}
	if err := cutover.InstallFence(ctx, src, j.cfg.Schema, j.plan.Tables); err != nil {
		return false, err
	}
	return false, nil
}

// cutover waits until the lag is below --max-lag, then runs the cutover
// while the stream keeps applying. It returns errFlipped on success.
func (j *Job) cutover(ctx context.Context, st *stream.Stream, sink *apply.Postgres) error {
	if j.Hooks.BeforeCutover != nil {
		j.Hooks.BeforeCutover(ctx)
	}
	src, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-cutover")
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	reverse := j.cfg.Promote && !j.cfg.Demote && !j.cfg.NoRollback
	cat, err := j.catalog(ctx)
	if err != nil {
		return err
	}
	defer cat.Conn.Close(context.Background())
	// fail records a cutover that stopped before the flip: tracking never
	// outlives a failed attempt, and neither does a rollback slot (the
	// cutover disarmed its fence, or kept it armed on purpose).
	fail := func(err error) error {
		if derr := state.StopTracking(context.Background(), src, j.ID); derr != nil {
			j.log.Error("stop tracking the tenant's writes", "err", derr)
		}
		if perr := state.SetJobPhase(context.Background(), src, j.ID, state.PhaseFailed, err.Error(), nil); perr != nil {
			j.log.Error("record the failed cutover", "err", perr)
		}
		if reverse {
			j.dropReverse(cat)
		}
		return stop(fmt.Errorf("cutover: %w", err))
	}
	var check func(context.Context, *pgx.Conn, *pgx.Conn) (*verify.Result, error)
	if !j.cfg.Cutover.SkipVerify {
		if check, err = j.preVerify(ctx, src, sink); err != nil {
			return fail(err)
		}
	}
	lag, err := j.waitCaughtUp(ctx, src, st, sink)
	if err != nil {
		return err
	}
	// Made before the last re-checks, so its time does not widen what the
	// fence must re-check.
	if reverse {
		if err := j.createReverse(ctx); err != nil {
			return fail(err)
		}
	}
	if check != nil {
		if err := j.converge(ctx, src, sink); err != nil {
			return fail(err)
		}
		if lag, err = j.waitCaughtUp(ctx, src, st, sink); err != nil {
			return err
		}
	}
	dst, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted-cutover")
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())
	// Second sessions, opened before the fence, so the drift check and the
	// sequences run beside the check under it.
	srcAux, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-cutover")
	if err != nil {
		return err
	}
	defer srcAux.Close(context.Background())
	dstAux, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted-cutover")
	if err != nil {
		return err
	}
	defer dstAux.Close(context.Background())
	if err := state.SetJobPhase(ctx, src, j.ID, state.PhaseArmed, "", nil); err != nil {
		return err
	}
	j.setPhase("cutover")
	c := cutover.New(j.cfg.Cutover, src, dst, cat, j.cfg.Tenant, j.log.With("stage", "cutover"))
	c.Drift = func(ctx context.Context, src *pgx.Conn) error { return j.plan.Drift(ctx, src, j.names.Publication) }
	c.Reconnect = func(ctx context.Context) (*pgx.Conn, error) {
		return db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-cutover")
	}
	c.Hooks = j.Hooks.Cutover
	c.Check = check
	c.SrcAux, c.DstAux = srcAux, dstAux
	if reverse {
		c.BeforeFlip = func(ctx context.Context, src *pgx.Conn) error { return j.markReverse(ctx, src, dst) }
	}
	sum, err := c.Run(ctx, cutover.Move{JobID: j.ID, Tenant: j.plan.Tenant(), Schema: j.cfg.Schema,
		TargetSchema: j.cfg.TargetSchema, Tables: j.plan.Tables, Sequences: j.plan.Sequences, Pooled: j.cfg.Demote, Entry: j.entry}, sink, lag)
	if err != nil {
		return fail(err)
	}
	if err := state.ClearChanged(ctx, src, j.ID); err != nil {
		j.log.Warn("forget the rows written since the verification (the flip is done)", "err", err)
	}
	blocked := sum.Blocked.Milliseconds()
	if err := state.SetJobPhase(ctx, src, j.ID, state.PhaseFlipped, "", &blocked); err != nil {
		j.log.Error("record flip (the catalog has flipped)", "err", err)
	}
	sum.PreVerify = j.preVerified
	j.summary = &Summary{Copied: map[string]int64{}, Changes: sink.Changes(), Cutover: sum, Version: sum.Version, CopySeconds: j.copySeconds,
		Rollback: reverse, Rounds: j.rounds}
	if !j.cfg.Demote {
		for _, q := range j.plan.Sequences {
			if !q.Shared {
				j.summary.Spread++
			}
		}
	}
	for t, n := range j.copied {
		j.summary.Copied[t.String()] = n
		j.summary.RowsCopied += n
	}
	return errFlipped
}

// preVerify compares the whole tenant at a consistent point before the
// fence, without blocking its writes, and from then on has the source
// record the key of every row of the tenant written (state.Track, through
// the fence trigger) while the sink records every row it changes. Under
// the fence only those rows are re-compared: the fence then lasts as long
// as the changes since the verification, not the tenant's size, and a
// change the stream lost is still caught, because the source recorded its
// key itself. With --fence-check full, or auto when the whole comparison
// is tiny (under 1% of --cutover-timeout: a small tenant's full comparison
// still costs a hundred milliseconds under the fence, a keyed re-check a
// few), everything is compared again under the fence instead.
func (j *Job) preVerify(ctx context.Context, src *pgx.Conn, sink *apply.Postgres) (func(context.Context, *pgx.Conn, *pgx.Conn) (*verify.Result, error), error) {
	tracking := j.cfg.Cutover.FenceCheck != cutover.CheckFull
	pre := j.preVerified
	if j.copyChecked {
		j.log.Info("the copy was verified at its snapshot and every row written since is recorded: only those rows are compared again", "stage", "cutover")
	} else {
		var err error
		if tracking {
			if tracking, err = j.track(ctx, src); err != nil {
				return nil, err
			}
		}
		if pre, err = j.verifyTurn(ctx, true); err != nil {
			return nil, err
		}
		j.preVerified = pre
	}
	if j.Hooks.Verified != nil {
		j.Hooks.Verified()
	}
	if !pre.Equal() {
		return nil, fmt.Errorf("the target differs from the source before the fence, so no cutover was tried: %s", strings.ReplaceAll(pre.Summary(), "\n", "; "))
	}
	if !tracking || (j.cfg.Cutover.FenceCheck == cutover.CheckAuto && pre.Duration < j.cfg.Cutover.Timeout/100) {
		return nil, nil // compare everything under the fence: it is cheap
	}
	j.rounds, j.epoch = nil, 0
	return func(ctx context.Context, src, dst *pgx.Conn) (*verify.Result, error) {
		start := time.Now()
		touched := sink.Touched()
		if !touched.Complete() {
			// Correct, and as slow as the tenant is large: the re-checks
			// before the fence normally leave the sink's list short.
			return verify.Compare(ctx, src, dst, j.plan.Tables, verify.Options{})
		}
		written, err := state.ChangedKeys(ctx, src, j.ID, j.epoch)
		if err != nil {
			return nil, err
		}
		res, err := j.compareKeys(ctx, src, dst, touched, written)
		if err != nil {
			return nil, err
		}
		res.Duration = time.Since(start)
		j.log.Info("re-checked the rows changed since the last check before the fence", "stage", "cutover", "rows", res.Rows, "ms", res.Duration.Milliseconds())
		return res, nil
	}, nil
}

// compareKeys compares the rows the sink touched and the source recorded
// as written, and only those.
func (j *Job) compareKeys(ctx context.Context, src, dst verify.Querier, touched apply.Touched, written map[string][][]string) (*verify.Result, error) {
	keys := map[*promoted.Table][][]string{}
	for _, t := range j.plan.Tables {
		keys[t] = append(append([][]string(nil), touched.Keys[t]...), written[t.Name]...)
	}
	return verify.CompareKeySets(ctx, src, dst, j.plan.Tables, keys, verify.Options{NoCounts: true})
}

// waitCaughtUp returns once the target is close enough behind the source
// for the drain to fit well inside the cutover timeout: the source's
// current WAL position, sampled, is reached by the stream within a fifth of
// the timeout, and the target is less than --max-lag bytes behind it. The
// stream's own view of the source's end is not enough: while it decodes a
// backlog it only knows what it has been sent.
func (j *Job) waitCaughtUp(ctx context.Context, src *pgx.Conn, st *stream.Stream, sink *apply.Postgres) (int64, error) {
	var said time.Time
	for {
		var s string
		if err := src.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
			return 0, fmt.Errorf("read the source's WAL position: %w", err)
		}
		target, err := promoted.ParseLSN(s)
		if err != nil {
			return 0, err
		}
		lag := int64(target) - int64(sink.Durable())
		start := time.Now()
		for st.ServerWALEnd() < target {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(2 * time.Millisecond):
			}
		}
		took := time.Since(start)
		if lag < j.cfg.Cutover.MaxLag && took < j.cfg.Cutover.Timeout/5 {
			j.log.Info("caught up: starting the cutover", "stage", "cutover", "lag_bytes", max(lag, 0), "decode_ms", took.Milliseconds())
			return max(lag, 0), nil
		}
		// Not close enough yet: look again shortly, and say so once a
		// second, not once per look.
		if time.Since(said) > time.Second {
			j.log.Info("waiting for the lag to allow the cutover", "stage", "cutover", "lag_bytes", lag, "decode_ms", took.Milliseconds())
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// finish drops what the source no longer needs after a flip: the slot and
// the publication. The fence stays armed until `cleanup`.
func (j *Job) finish(ctx context.Context) error {
	if err := snapshot.Drop(ctx, j.src, j.names); err != nil {
		return fmt.Errorf("the catalog has flipped, but dropping the slot failed (rerun promote or cleanup to finish): %w", err)
	}
	if err := state.SetJobPhase(ctx, j.src, j.ID, state.PhaseDone, "flipped", nil); err != nil {
		return err
	}
	if j.cfg.Rollback {
		if err := j.finishRollback(ctx); err != nil {
			return fmt.Errorf("the catalog has flipped back, but the pooled rows are still fenced (rerun rollback to finish): %w", err)
		}
	}
	j.setPhase(state.PhaseDone)
	return nil
}
