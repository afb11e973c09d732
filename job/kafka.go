package job

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply/kafka"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/stream"
)

// KafkaScheme starts a --sink that names Kafka brokers instead of a
// PostgreSQL database.
const KafkaScheme = "kafka://"

// IsKafka reports whether the move's sink is Kafka.
func (c *Config) IsKafka() bool { return strings.HasPrefix(c.TargetDSN, KafkaScheme) }

// KafkaID names a replica of one tenant into Kafka. It differs from the
// tenant's promotion (JobID), so a tenant can be replicated to analytics
// while it is promoted, each with its own slot and lease.
func KafkaID(database, schema, tenant string) string {
	return JobID(database, schema+"\x00kafka", tenant)
}

// runKafka is Run for a replica into Kafka. The topics themselves are the
// progress record: on every start the sink reads the last record of each
// partition, skips what was delivered, and the stream resumes from the
// slot's confirmed position (which never passes what the broker
// acknowledged). A snapshot that was interrupted is taken again from the
// start, with a new slot: an exported snapshot does not survive its
// session.
func (j *Job) runKafka(ctx context.Context) error {
	src, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted")
	if err != nil {
		return err
	}
	j.src = src
	defer func() { j.src.Close(context.Background()) }()
	if err := preflight(ctx, src); err != nil {
		return err
	}
	var dbName string
	if err := src.QueryRow(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		return fmt.Errorf("identify source database: %w", err)
	}
	plan, err := schema.Load(ctx, src, schema.Config{Schema: j.cfg.Schema, TargetSchema: j.cfg.Schema,
		TenantColumn: j.cfg.TenantColumn, Tables: j.cfg.Tables, Tenant: promoted.Tenant(j.cfg.Tenant)})
	if err != nil {
		return err
	}
	j.plan = plan
	j.estimate(plan.Tables)
	j.ID = KafkaID(dbName, j.cfg.Schema, plan.Tenant())
	j.names = snapshot.NamesFor(j.ID)
	j.log = j.log.With("job", j.ID)
	if j.lease, err = acquireLease(ctx, j.cfg.SourceDSN, j.ID, plan.Tenant()); err != nil {
		return err
	}
	defer func() { j.lease.release() }()
	if err := checkSlots(ctx, src, j.names.Slot); err != nil {
		return err
	}
	if err := checkOwnership(ctx, src, plan.Tables); err != nil {
		return err
	}
	if err := checkStateRights(ctx, src, "source"); err != nil {
		return err
	}
	rec, err := state.ReadJob(ctx, src, j.ID)
	if err != nil {
		return err
	}
	if rec != nil && rec.Active() {
		if err := j.sameMove(rec, &state.Progress{}); err != nil {
			return err
		}
	}
	types, err := kafka.LoadTypes(ctx, src, plan.Tables)
	if err != nil {
		return err
	}
	for _, t := range plan.Tables {
		mode := "server row filter"
		if !t.ServerFilter {
			mode = "filtered by promoted (replica identity lacks " + j.cfg.TenantColumn + ")"
		}
		j.log.Info("table", "stage", "plan", "table", t.String(), "estimated_rows", t.EstimatedRows, "filter", mode)
	}
	// The record's phase is read before it is rewritten: "snapshot" says
	// the topics do not hold the whole snapshot yet.
	record := &state.Job{ID: j.ID, Tenant: plan.Tenant(), Schema: j.cfg.Schema, Kind: state.KindReplicate,
		Target: j.cfg.TargetDSN, TargetSchema: j.cfg.Schema, TenantColumn: j.cfg.TenantColumn,
		TenantType: plan.TenantType(), Tables: plan.TableNames(), Phase: state.PhasePrepare, Definitions: plan.Definitions}
	if rec != nil && rec.Active() {
		record.Phase = rec.Phase
	}
	if err := state.RecordJob(ctx, src, record); err != nil {
		return err
	}
	var fetcher *snapshot.Fetcher
	if j.cfg.Kafka.RereadToast {
		fetcher = snapshot.NewFetcher(j.cfg.SourceDSN)
		defer fetcher.Close(context.Background())
	}
	newSink := func() (*kafka.Sink, error) {
		s, err := kafka.New(j.cfg.Kafka, plan.Tables, types, j.log.With("stage", "kafka"))
		if err == nil && fetcher != nil {
			s.Fetch = fetcher
		}
		return s, err
	}
	sink, err := newSink()
	if err != nil {
		return err
	}
	// The sink, once it has read what the topics hold, goes on into the
	// stream (followKafka owns it): a restart reads every partition once.
	res, err := sink.Resume(ctx)
	var slotThere bool
	if err == nil {
		err = src.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, j.names.Slot).Scan(&slotThere)
	}
	if err != nil {
		sink.Close()
		return fmt.Errorf("look for what the replica delivered: %w", err)
	}
	switch {
	case !slotThere || rec == nil || !rec.Active():
		if res.Streamed || anySnapshot(res) {
			j.log.Warn("the topics hold records of an earlier replica whose slot is gone: the new snapshot rewrites every row, but rows deleted since that replica stopped stay in the topics; delete the topics first for an exact copy", "stage", "prepare")
		}
		err := error(nil)
		if slotThere {
			err = snapshot.Drop(ctx, src, j.names)
		}
		if err == nil {
			err = j.kafkaSnapshot(ctx, src, sink)
		}
		if err != nil {
			sink.Close()
			return err
		}
	case rec.Phase == state.PhasePrepare || rec.Phase == state.PhaseCopy:
		j.log.Warn("an earlier run stopped before the snapshot was written whole: streaming the changes since its start, then writing the rows not yet delivered as of a new snapshot (rows of a batch the broker never acknowledged may repeat; consumers upsert op r by key)", "stage", "prepare")
		sink.Close() // the snapshot's records will make what it read stale
		sink = nil
		var done map[string]kafka.SnapshotProgress
		if !res.Streamed {
			done = res.Snapshot
		}
		if err := j.kafkaResnapshot(ctx, src, newSink, done); err != nil {
			return err
		}
	}
	return j.followKafka(ctx, newSink, sink)
}

// kafkaSnapshot creates the publication and the slot, and writes every
// row of the tenant as a snapshot record (op r) read under the slot's
// exported snapshot. Once a row may have reached the topics the slot is
// kept whatever happens: a rerun needs it to take the snapshot again
// without leaving rows in the topics that were deleted since.
func (j *Job) kafkaSnapshot(ctx context.Context, src *pgx.Conn, sink *kafka.Sink) error {
	j.setPhase("prepare")
	repl, slot, err := j.createSlot(ctx, src)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if derr := snapshot.Drop(cctx, src, j.names); derr != nil {
			j.log.Error("drop slot and publication after failure", "err", derr)
		}
		return err
	}
	defer repl.Close(context.Background())
	return j.writeSnapshot(ctx, sink, slot.SnapshotName, slot.ConsistentPoint, nil)
}

// anySnapshot reports whether the topics hold snapshot records.
func anySnapshot(res *kafka.Resumed) bool {
	for _, p := range res.Snapshot {
		if p.Complete || p.After != nil {
			return true
		}
	}
	return false
}

// writeSnapshot writes every row of the tenant as a snapshot record
// (op r), read under the exported snapshot name taken at lsn, and records
// that the topics hold the whole snapshot.
func (j *Job) writeSnapshot(ctx context.Context, sink *kafka.Sink, name string, lsn promoted.LSN, done map[string]kafka.SnapshotProgress) error {
	conn, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-snapshot")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	tx, err := db.BeginAt(ctx, conn, name)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer tx.Rollback(context.Background())
	start := time.Now()
	// A read-only snapshot transaction has no xid of its own: txId stays
	// empty, as Debezium's would for a snapshot on a standby.
	sink.StartSnapshot(kafka.SnapshotInfo{LSN: lsn})
	for _, t := range j.plan.Tables {
		p := done[t.String()]
		if p.Complete {
			j.log.Info("snapshot of the table already delivered", "stage", "snapshot", "table", t.String())
			continue
		}
		if p.After != nil {
			j.log.Info("snapshot of the table resumed after its last row delivered", "stage", "snapshot", "table", t.String(), "after", p.After)
		}
		if err := sink.SnapshotTable(ctx, conn, t, p.After, snapshotBatch); err != nil {
			return err
		}
		if j.Hooks.AfterChunk != nil {
			j.Hooks.AfterChunk(t.String())
		}
	}
	if err := sink.FinishSnapshot(ctx); err != nil {
		return err
	}
	j.copySeconds = time.Since(start).Seconds()
	j.log.Info("snapshot written", "stage", "snapshot", "seconds", fmt.Sprintf("%.2f", j.copySeconds), "lsn", lsn.String())
	return j.recordPhase(ctx, state.PhaseCatchup)
}

// followKafka streams the tenant's changes into Kafka until ctx ends,
// into first (a sink that has read what the topics hold) and, after a
// transient failure, into a new such sink, the stream starting again from
// the slot's confirmed position.
func (j *Job) followKafka(ctx context.Context, newSink func() (*kafka.Sink, error), first *kafka.Sink) error {
	backoff := retryMin
	var failingSince time.Time
	for attempt := 1; ; attempt++ {
		started := time.Now()
		sink, err := first, error(nil)
		if first = nil; sink == nil {
			sink, err = resumed(ctx, newSink)
		}
		if err == nil {
			err = j.streamKafka(ctx, sink, 0)
		}
		if err == nil || ctx.Err() != nil || !db.Transient(err) {
			return j.budgetErr(err)
		}
		if time.Since(started) > retryReset {
			backoff, failingSince = retryMin, time.Time{}
		}
		if failingSince.IsZero() {
			failingSince = started
		}
		if time.Since(failingSince) > j.cfg.RetryFor {
			return fmt.Errorf("the source or the brokers stayed unreachable for %s (--retry-for): rerun the same command once they answer, it resumes where the topics stand: %w", j.cfg.RetryFor, err)
		}
		j.m.retries.Inc()
		j.log.Warn("lost a connection: resuming from what the topics hold", "stage", "catchup", "retry", attempt, "in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, retryMax)
	}
}

// streamKafka is one run of the stream into sink (resumed; closed at the
// end); with until, it stops with errReached at the first transaction
// committed at or past it.
func (j *Job) streamKafka(ctx context.Context, sink *kafka.Sink, until promoted.LSN) error {
	defer sink.Close()
	slot, err := snapshot.ReadSlot(ctx, j.src, j.names.Slot)
	if err != nil {
		return err
	}
	from := slot.ConfirmedFlush
	sink.SetDurable(from)
	repl, err := snapshot.ConnectReplication(ctx, j.cfg.SourceDSN, j.cfg.SlotTimeout)
	if err != nil {
		return err
	}
	defer repl.Close(context.Background())
	scfg := j.cfg.Stream
	scfg.Slot, scfg.Publication = j.names.Slot, j.names.Publication
	scfg.Evolve = j.addedColumn(sink.Types())
	st, err := stream.New(scfg, repl, j.plan.Tables, j.log.With("stage", "stream"))
	if err != nil {
		return err
	}
	j.mu.Lock()
	j.durable, j.stream = sink.Durable, st
	j.mu.Unlock()
	var to promoted.Sink = sink
	if until != 0 {
		to = untilSink{Sink: sink, until: until}
	} else if err := j.startCatchup(ctx, true); err != nil {
		return err
	}
	err = j.runStream(ctx, st, from, to)
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// snapshotBatch is how many snapshot rows are written between waits for
// the broker's acknowledgements: large enough that the wait is a small
// part of the time, small enough to bound the memory held.
const snapshotBatch = 4000
