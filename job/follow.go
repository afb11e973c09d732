package job

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
)

// Retry pacing: the pause doubles from retryMin up to retryMax, and a
// stream that ran for retryReset before failing starts over at retryMin.
const (
	retryMin   = 100 * time.Millisecond
	retryMax   = 10 * time.Second
	retryReset = 30 * time.Second
)

// followAfter streams the tenant's changes from the target's durable position
// until ctx ends, reconnecting after a transient failure (a connection
// reset or refused, a restarting server, a silent network) with a bounded
// backoff: the move rides out a restart of either database without a
// person. A fatal error (a lost slot, a TRUNCATE, a schema change, a
// diverged target, a failed cutover) is never retried, and neither is a
// failure that lasts longer than --retry-for. A first, a transient
// failure of the stream that followed the copy, counts as a retry.
func (j *Job) followAfter(ctx context.Context, first error) error {
	backoff := retryMin
	var failingSince time.Time
	for attempt := 1; ; attempt++ {
		started := time.Now()
		err := first
		if err == nil {
			err = j.followOnce(ctx)
		}
		first = nil
		if err == nil || ctx.Err() != nil || !db.Transient(err) {
			return err
		}
		if time.Since(started) > retryReset {
			backoff, failingSince = retryMin, time.Time{}
		}
		if failingSince.IsZero() {
			failingSince = started
		}
		if time.Since(failingSince) > j.cfg.RetryFor {
			return fmt.Errorf("the databases stayed unreachable for %s (--retry-for): rerun the same command once they answer, it resumes where the target stands: %w",
				j.cfg.RetryFor, err)
		}
		j.m.retries.Inc()
		j.log.Warn("lost the connection: resuming from the target's position", "stage", "catchup", "retry", attempt, "in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, retryMax)
	}
}

// followOnce reconnects what a failure may have broken (the coordinator's
// source session and the lease), reads the durable position from the
// target, checks the slot, and streams from there.
func (j *Job) followOnce(ctx context.Context) error {
	if err := j.reconnect(ctx); err != nil {
		return err
	}
	dst, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted")
	if err != nil {
		return err
	}
	prog, err := state.ReadProgress(ctx, dst, j.ID)
	dst.Close(context.Background())
	if err != nil {
		return err
	}
	if prog == nil || prog.Phase != state.ProgressCatchup {
		return errors.New("the target no longer records this move's copy: run `promoted cancel`, then the same command again")
	}
	slot, err := snapshot.ReadSlot(ctx, j.src, j.names.Slot)
	if err != nil {
		return err
	}
	again := fmt.Sprintf("run `promoted cancel --source ... --tenant %s --schema %s`, then the same command again: it copies the tenant anew", j.cfg.Tenant, j.cfg.Schema)
	if !slot.Exists {
		return fmt.Errorf("the move's replication slot %s is gone from the source, so changes since %s cannot be streamed: %s", j.names.Slot, prog.Applied, again)
	}
	if slot.WALStatus == "lost" {
		return fmt.Errorf("the move's replication slot %s lost WAL it needed (max_slot_wal_keep_size): %s", j.names.Slot, again)
	}
	if slot.ConfirmedFlush > prog.Applied {
		return fmt.Errorf("the slot %s was acknowledged up to %s but the target holds changes only up to %s, so changes in between would be lost (was the slot recreated?): %s", j.names.Slot, slot.ConfirmedFlush, prog.Applied, again)
	}
	if slot.Active {
		// A killed daemon's walsender, or ours from before the failure,
		// may linger until it notices; while it holds the slot, starting
		// fails with 55006 and is retried.
		if _, err := j.src.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1`, j.names.Slot); err != nil {
			return fmt.Errorf("end the slot's old walsender: %w", err)
		}
	}
	// A new sink does not know the rows the one before changed: the copy's
	// check no longer covers them, so the cutover verifies in full.
	j.copyChecked = false
	j.log.Info("resuming", "stage", "catchup", "from", prog.Applied.String())
	repl, err := snapshot.ConnectReplication(ctx, j.cfg.SourceDSN, j.cfg.SlotTimeout)
	if err != nil {
		return err
	}
	defer repl.Close(context.Background())
	return j.catchup(ctx, repl, prog.Applied)
}

// reconnect reopens the coordinator's source session and retakes the
// lease when a failure closed them. A lease another promoted took in
// between stops this one.
func (j *Job) reconnect(ctx context.Context) error {
	if j.src == nil || j.src.Ping(ctx) != nil {
		if j.src != nil {
			j.src.Close(context.Background())
		}
		src, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted")
		if err != nil {
			return err
		}
		j.src = src
	}
	if j.lease != nil && j.lease.conn.Ping(ctx) == nil {
		return nil
	}
	j.lease.release()
	l, err := acquireLease(ctx, j.cfg.SourceDSN, j.ID, j.plan.Tenant())
	if err != nil {
		return err
	}
	j.lease = l
	return nil
}
