package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
)

// Sink writes one tenant's transactions to Kafka as Debezium's PostgreSQL
// connector would. Apply encodes into the current batch (across
// transactions, so produce requests are large) and hands it to the broker
// once it holds --kafka-flush-bytes, encoding on while it is written;
// Flush hands over what is encoded and waits for acks=all; Durable is the
// end LSN of the last transaction whose every record the broker
// acknowledged.
//
// After a failed write the sink is broken: every later call returns the
// same error, and the caller makes a new Sink, calls Resume and streams
// again from Durable (what a partial write delivered is then skipped).
//
// A produce request that timed out or hit a retriable error is retried,
// as kafka-go's writer would; a retry of a request the broker had in fact
// written duplicates its records. Consumers that must not see repeats drop
// them by source.lsn and source.sequence (Debezium's own advice for its
// at-least-once delivery).
type Sink struct {
	// Fetch re-reads rows from the source for Config.RereadToast; set it
	// before the first Apply.
	Fetch promoted.RowFetcher

	cfg       Config
	log       *slog.Logger
	m         *metrics
	types     *Types
	tables    map[*promoted.Table]*tableEnc
	order     []*tableEnc
	client    *kafkago.Client
	transport *kafkago.Transport
	// attempts bounds the tries of one produce request (tests lower it).
	attempts int
	// now is the clock of envelope ts_ms and heartbeats (tests pin it).
	now func() time.Time

	durable atomic.Uint64
	err     error

	// cur is the batch being encoded; flight the one being written.
	cur    *batch
	flight *flight
	pool   pool
	// Scratch space for encoding one record at a time, reused: its bytes
	// are copied into the batch.
	keyBuf, valBuf, posBuf, hdrBuf []byte
	hdrs                           []kafkago.Header
	// srcHead and srcDB are the source block's constant parts.
	srcHead, srcDB []byte

	txn        txnState
	lastCommit promoted.LSN
	hasCommit  bool
	lastBeat   time.Time

	// partitions caches each topic's partition count; delivered is what
	// Resume found in each partition, for skipping after a restart.
	partitions map[string]int
	delivered  map[string]map[int]Position

	snap snapshotRun
}

// New makes a sink for the tables (the moved tables, in snapshot order)
// with the catalog information LoadTypes read. Nothing connects or runs
// until the first Resume, Apply or Snapshot.
func New(cfg Config, tables []*promoted.Table, types *Types, log *slog.Logger) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if types == nil {
		return nil, errors.New("kafka sink: no type information (call LoadTypes)")
	}
	s := &Sink{cfg: cfg, log: log, types: types, tables: map[*promoted.Table]*tableEnc{},
		now: time.Now, partitions: map[string]int{}}
	tenant := ""
	if len(tables) > 0 {
		tenant = tables[0].TenantLiteral
	}
	s.m = newMetrics(tenant)
	for i, t := range tables {
		te, err := newTableEnc(&s.cfg, t, i, types, log)
		if err != nil {
			return nil, err
		}
		s.tables[t] = te
		s.order = append(s.order, te)
	}
	s.transport = &kafkago.Transport{DialTimeout: cfg.Timeout, IdleTimeout: time.Minute, ClientID: "promoted"}
	s.client = &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Timeout: cfg.Timeout, Transport: s.transport}
	s.attempts = 3
	s.srcHead, s.srcDB = sourceParts(cfg.Prefix, types.Database)
	s.cur = newBatch()
	// Two batches are in memory at most (one written, one encoded): keep
	// buffers for about as much, plus the partitions' partly filled sets.
	s.pool.limit = 3 * cfg.FlushBytes
	return s, nil
}

// SetDurable starts the sink's durable position at lsn: the slot's
// confirmed position when the sink is made, so a quiet tenant's
// heartbeats advance from there.
func (s *Sink) SetDurable(lsn promoted.LSN) {
	s.setDurable(lsn)
	if !s.hasCommit {
		s.lastCommit, s.hasCommit = lsn, lsn != 0
	}
}

// Durable is the end LSN of the last transaction all of whose records the
// broker acknowledged (acks=all). It never counts a record still in
// flight.
func (s *Sink) Durable() promoted.LSN { return promoted.LSN(s.durable.Load()) }

// Apply encodes one transaction (or part) into the current batch,
// handing the batch to the broker once it holds --kafka-flush-bytes (after
// the batch before it is acknowledged).
func (s *Sink) Apply(ctx context.Context, txn *promoted.Txn) error {
	if s.err != nil {
		return s.err
	}
	if err := s.reap(ctx); err != nil {
		return err
	}
	if txn.Heartbeat() {
		if txn.EndLSN <= s.Durable() {
			return nil
		}
		if s.cfg.HeartbeatInterval > 0 && s.now().Sub(s.lastBeat) >= s.cfg.HeartbeatInterval {
			s.lastBeat = s.now()
			key, value := s.heartbeatRecord()
			// HeartbeatImpl sends to partition 0.
			if err := s.add(ctx, &record{topic: topicName("__debezium-heartbeat", s.cfg.Prefix), key: key, value: value, partition: -1}, nil); err != nil {
				return s.fail(err)
			}
		}
		b := s.cur
		b.marks = append(b.marks, mark{end: txn.EndLSN, upto: b.n})
		if b.n == 0 && s.flight == nil {
			// Nothing is pending before it.
			b.settle(s.setDurable)
			b.marks, b.settled = b.marks[:0], 0
		}
		return nil
	}
	if err := s.applyTxn(ctx, txn); err != nil {
		return s.fail(err)
	}
	if s.cur.bytes >= s.cfg.FlushBytes {
		return s.handoff(ctx)
	}
	return nil
}

func (s *Sink) applyTxn(ctx context.Context, txn *promoted.Txn) error {
	if !s.txn.open || s.txn.xid != txn.Xid || s.txn.final != txn.FinalLSN {
		s.txn = txnState{open: true, xid: txn.Xid, final: txn.FinalLSN}
	}
	if s.cfg.TransactionMetadata && !s.txn.begun && len(txn.Changes) > 0 {
		// Debezium's BEGIN id carries the LSN it saw the BEGIN message at:
		// where the walsender put it (before the transaction's first row
		// it sent, which may be another tenant's the stream filtered out).
		s.txn.begun = true
		first := txn.BeginLSN
		if first == 0 {
			first = txn.Changes[0].LSN
		}
		id := txnID(txn.Xid, first)
		if err := s.add(ctx, &record{topic: topicName(s.cfg.Prefix, "transaction"), key: s.txnKey(id),
			value: s.txnValue("BEGIN", id, &s.txn, txn.CommitTime)}, &Position{Commit: txn.FinalLSN}); err != nil {
			return err
		}
	}
	for i := range txn.Changes {
		c := &txn.Changes[i]
		if c.Op == promoted.Message {
			continue
		}
		if c.Op == promoted.Relation {
			// A column added or dropped on the source: the records from
			// the next change on carry the table's new schema, as
			// Debezium's do. Nothing is written for the change itself.
			if err := s.follow(c.Table); err != nil {
				return err
			}
			continue
		}
		te := s.tables[c.Table]
		if te == nil {
			return fmt.Errorf("encode %s: the sink was not made for this table", c.Table)
		}
		if err := s.change(ctx, te, txn, c); err != nil {
			return err
		}
	}
	if txn.Partial {
		return nil
	}
	if s.cfg.TransactionMetadata && s.txn.begun {
		id := txnID(txn.Xid, txn.EndLSN)
		if err := s.add(ctx, &record{topic: topicName(s.cfg.Prefix, "transaction"), key: s.txnKey(id),
			value: s.txnValue("END", id, &s.txn, txn.CommitTime)}, &Position{Commit: txn.FinalLSN, LSN: txn.EndLSN}); err != nil {
			return err
		}
	}
	s.txn = txnState{}
	s.lastCommit, s.hasCommit = txn.EndLSN, true
	s.cur.marks = append(s.cur.marks, mark{end: txn.EndLSN, upto: s.cur.n})
	s.m.txns.Inc()
	return nil
}

// change encodes one row change as Debezium's RelationalChangeRecordEmitter
// does for pgoutput.
func (s *Sink) change(ctx context.Context, te *tableEnc, txn *promoted.Txn, c *promoted.Change) error {
	t := te.table
	src := source{ts: txn.CommitTime, lastCommit: s.lastCommit, hasCommit: s.hasCommit, lsn: c.LSN, txID: int64(txn.Xid)}
	pos := Position{Commit: txn.FinalLSN, LSN: c.LSN}
	block := func() []byte {
		if !s.cfg.TransactionMetadata {
			return nil
		}
		total, per := s.txn.event(te.collection)
		return appendTxBlock(nil, txn.Xid, c.LSN, total, per)
	}
	switch c.Op {
	case promoted.Insert:
		after, err := s.reread(ctx, t, c.New, txn.Xid)
		if err != nil {
			return err
		}
		return s.emit(ctx, te, &envelope{op: 'c', after: after, src: src, txBlock: block()}, after, pos, nil)
	case promoted.Update:
		after := c.New
		full := t.ReplicaIdentity == 'f' && c.KeyColumns == nil && c.Key != nil
		if full {
			// REPLICA IDENTITY FULL sends the whole old row, whose values
			// stand in for unchanged TOAST values of the new one.
			after = withOldToasted(c.New, c.Key)
		}
		after, err := s.reread(ctx, t, after, txn.Xid)
		if err != nil {
			return err
		}
		if c.Key != nil && !samePK(t, c.Key, c.New) {
			return s.keyChange(ctx, te, txn, c, after, src, pos, block, full)
		}
		var before promoted.Row
		if full {
			before = c.Key
		}
		return s.emit(ctx, te, &envelope{op: 'u', before: before, after: after, src: src, txBlock: block()}, after, pos, nil)
	case promoted.Delete:
		before, only := s.oldRow(te, c)
		pos.Sub = 0
		if err := s.emit(ctx, te, &envelope{op: 'd', before: before, beforeOnly: only, src: src, txBlock: block()}, c.Key, pos, nil); err != nil {
			return err
		}
		pos.Sub = 1
		return s.tombstone(ctx, te, c.Key, pos, nil)
	}
	return nil
}

// oldRow is a delete's (or key change's) before: the whole old row with
// REPLICA IDENTITY FULL, else only the identity columns.
func (s *Sink) oldRow(te *tableEnc, c *promoted.Change) (promoted.Row, func(int) bool) {
	if te.table.ReplicaIdentity == 'f' && c.KeyColumns == nil {
		return c.Key, nil
	}
	cols := c.KeyColumns
	if cols == nil {
		cols = te.table.PrimaryKey
	}
	return c.Key, func(i int) bool {
		for _, k := range cols {
			if k == i {
				return true
			}
		}
		return false
	}
}

// keyChange is emitUpdateAsPrimaryKeyChangeRecord: a delete of the old key
// (with its tombstone) and a create of the new one, linked by headers.
func (s *Sink) keyChange(ctx context.Context, te *tableEnc, txn *promoted.Txn, c *promoted.Change, after promoted.Row,
	src source, pos Position, block func() []byte, full bool) error {
	before, only := s.oldRow(te, c)
	newKey, err := te.keyHeader(c.New)
	if err != nil {
		return err
	}
	oldKey, err := te.keyHeader(c.Key)
	if err != nil {
		return err
	}
	hNew := []kafkago.Header{{Key: headerNewKey, Value: newKey}}
	pos.Sub = 0
	if err := s.emit(ctx, te, &envelope{op: 'd', before: before, beforeOnly: only, src: src, txBlock: block()}, c.Key, pos, hNew); err != nil {
		return err
	}
	pos.Sub = 1
	if err := s.tombstone(ctx, te, c.Key, pos, hNew); err != nil {
		return err
	}
	pos.Sub = 2
	return s.emit(ctx, te, &envelope{op: 'c', after: after, src: src, txBlock: block()}, c.New, pos,
		[]kafkago.Header{{Key: headerOldKey, Value: oldKey}})
}

func (s *Sink) emit(ctx context.Context, te *tableEnc, e *envelope, keyRow promoted.Row, pos Position, headers []kafkago.Header) error {
	var err error
	if s.keyBuf, err = te.appendKey(s.keyBuf[:0], keyRow); err != nil {
		return err
	}
	if s.valBuf, err = s.appendValue(s.valBuf[:0], te, e); err != nil {
		return err
	}
	s.m.op(e.op)
	return s.add(ctx, &record{topic: te.topic, key: s.keyBuf, head: te.valueHead, value: s.valBuf, headers: headers}, &pos)
}

func (s *Sink) tombstone(ctx context.Context, te *tableEnc, keyRow promoted.Row, pos Position, headers []kafkago.Header) error {
	if !s.cfg.Tombstones {
		return nil
	}
	var err error
	if s.keyBuf, err = te.appendKey(s.keyBuf[:0], keyRow); err != nil {
		return err
	}
	return s.add(ctx, &record{topic: te.topic, key: s.keyBuf, headers: headers}, &pos)
}

// reread fills a row's unchanged TOAST values from the source's current
// row, with --kafka-reread-toast; otherwise, or when the row is gone
// from the source since, the row is returned as it is (the encoder writes
// the placeholder).
func (s *Sink) reread(ctx context.Context, t *promoted.Table, row promoted.Row, xid uint32) (promoted.Row, error) {
	if !s.cfg.RereadToast || s.Fetch == nil || !slices.ContainsFunc(row, func(v promoted.Value) bool { return v.Kind == promoted.Unchanged }) {
		return row, nil
	}
	now, ok, err := s.Fetch.FetchRow(ctx, t, row, xid)
	if err != nil {
		return nil, fmt.Errorf("re-read unchanged TOAST values of %s: %w", t, err)
	}
	if !ok {
		return row, nil
	}
	s.m.rereads.Inc()
	out := append(promoted.Row(nil), row...)
	for i, v := range out {
		if v.Kind == promoted.Unchanged && i < len(now) && now[i].Kind != promoted.Unchanged && !t.Columns[i].Generated {
			out[i] = now[i]
		}
	}
	return out, nil
}

// samePK reports whether two rows carry the same primary key text.
func samePK(t *promoted.Table, a, b promoted.Row) bool {
	for _, k := range t.PrimaryKey {
		if a[k].Kind != b[k].Kind || !bytes.Equal(a[k].Data, b[k].Data) {
			return false
		}
	}
	return true
}

// withOldToasted replaces the new row's unchanged TOAST values with the
// old row's, where the old row has them.
func withOldToasted(newRow, oldRow promoted.Row) promoted.Row {
	var out promoted.Row
	for i, v := range newRow {
		if v.Kind == promoted.Unchanged && i < len(oldRow) && oldRow[i].Kind != promoted.Unchanged {
			if out == nil {
				out = append(promoted.Row(nil), newRow...)
			}
			out[i] = oldRow[i]
		}
	}
	if out == nil {
		return newRow
	}
	return out
}

func (s *Sink) fail(err error) error {
	if s.err == nil {
		s.err = err
		s.m.errors.Inc()
	}
	return err
}

// follow makes the encoder of a table's new definition (after ADD or DROP
// COLUMN on the source), in the old one's place in the snapshot order.
func (s *Sink) follow(t *promoted.Table) error {
	for _, old := range s.order {
		if old.table.Schema != t.Schema || old.table.Name != t.Name {
			continue
		}
		te, err := newTableEnc(&s.cfg, t, old.index, s.types, s.log)
		if err != nil {
			return err
		}
		s.tables[t] = te
		return nil
	}
	return fmt.Errorf("encode %s: the sink was not made for this table", t)
}

// Types is the catalog information the sink encodes with; a replica adds
// to it the columns added on the source while it runs.
func (s *Sink) Types() *Types { return s.types }
