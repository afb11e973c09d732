package job

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply/kafka"
	"github.com/promoted/promoted/snapshot"
)

// kafkaResnapshot takes the snapshot again after a run stopped while
// writing it. The exported snapshot died with that run, and some of its
// rows are in the topics, others not; rows it wrote may have changed or
// gone since. So: a new exported snapshot is taken (a temporary slot, at
// lsn), the changes from the old slot's start up to lsn are streamed first
// (so a row deleted meanwhile is deleted in the topics too), and then every
// row not yet delivered is written as of lsn; the stream goes on from
// there. Each key ends as the source has it, in order.
//
// done is what the topics held before anything was streamed (Resume's
// snapshot progress): the tables wholly written and, in the others, the
// key up to which every row was acknowledged. Those rows are not written
// again: each was written as of an earlier snapshot point, and every
// change after that point up to lsn is in the stream just delivered (a
// slot only advances past a window once it is delivered). Rows of an
// unacknowledged batch may still repeat. nil (the topics already hold
// change records last: an earlier resnapshot stopped in its stream)
// writes every row again.
func (j *Job) kafkaResnapshot(ctx context.Context, src *pgx.Conn, newSink func() (*kafka.Sink, error), done map[string]kafka.SnapshotProgress) error {
	j.setPhase("snapshot")
	repl, err := snapshot.ConnectReplication(ctx, j.cfg.SourceDSN, j.cfg.SlotTimeout)
	if err != nil {
		return err
	}
	defer repl.Close(context.Background())
	tmp, err := snapshot.CreateTemporarySlot(ctx, repl, fmt.Sprintf("promoted_s_%s", j.ID))
	if err != nil {
		return err
	}
	// A transaction past the new snapshot, so the stream passes it even
	// while the tenant is quiet.
	if _, err := src.Exec(ctx, "SELECT pg_logical_emit_message(true, 'promoted-verify', '')"); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	window, err := resumed(ctx, newSink)
	if err != nil {
		return err
	}
	if err := j.streamKafka(ctx, window, tmp.ConsistentPoint); !errors.Is(err, errReached) {
		if err == nil {
			err = ctx.Err()
		}
		return err
	}
	// The snapshot's records will be the partitions' last ones, which say
	// nothing about the changes delivered before them: the slot itself
	// must be past those changes before any of it is written.
	if err := j.advanceSlot(ctx, src, j.Applied()); err != nil {
		return err
	}
	sink, err := resumed(ctx, newSink)
	if err != nil {
		return err
	}
	defer sink.Close()
	return j.writeSnapshot(ctx, sink, tmp.SnapshotName, tmp.ConsistentPoint, done)
}

// advanceSlot moves the replica's slot to lsn (what the broker has
// acknowledged), waiting for the walsender of the stream just stopped to
// let go of it.
func (j *Job) advanceSlot(ctx context.Context, src *pgx.Conn, lsn promoted.LSN) error {
	var err error
	for i := 0; i < 100; i++ {
		if _, err = src.Exec(ctx, "SELECT pg_replication_slot_advance($1, $2::pg_lsn)", j.names.Slot, lsn.String()); err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object_in_use: still active
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("advance the replica's slot to %s: %w", lsn, err)
}

// errReached stops a stream that was asked to stop at a position.
var errReached = errors.New("the stream reached its stop position")

// untilSink passes transactions committed before until to its sink, and
// stops the stream at the first one at or past it (not passed on), once
// everything before it is durable.
type untilSink struct {
	*kafka.Sink
	until promoted.LSN
}

func (u untilSink) Apply(ctx context.Context, txn *promoted.Txn) error {
	past := txn.FinalLSN >= u.until
	if txn.Heartbeat() {
		past = txn.EndLSN >= u.until
	}
	if !past {
		return u.Sink.Apply(ctx, txn)
	}
	if err := u.Sink.Flush(ctx); err != nil {
		return err
	}
	return errReached
}

// resumed makes a sink and has it read what the topics hold, so it skips
// what was delivered.
func resumed(ctx context.Context, newSink func() (*kafka.Sink, error)) (*kafka.Sink, error) {
	sink, err := newSink()
	if err != nil {
		return nil, err
	}
	if _, err := sink.Resume(ctx); err != nil {
		sink.Close()
		return nil, err
	}
	return sink, nil
}
