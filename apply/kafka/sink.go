package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
)

// Sink writes one tenant's transactions to Kafka as Debezium's PostgreSQL
// connector would. Apply encodes and buffers (across transactions, so
// produce requests are large); Flush writes what is buffered and waits
// for acks=all; Durable is the end LSN of the last transaction whose every
// record the broker acknowledged.
//
// After a failed write the sink is broken: every later call returns the
// same error, and the caller makes a new Sink, calls Resume and streams
// again from Durable (what a partial write delivered is then skipped).
//
// kafka-go retries a produce request that timed out or hit a retriable
// error; a retry of a request the broker had in fact written duplicates
// its records. Consumers that must not see repeats drop them by
// source.lsn and source.sequence (Debezium's own advice for its
// at-least-once delivery).
type Sink struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	types  *Types
	tables map[*promoted.Table]*tableEnc
	order  []*tableEnc
	w      *kafkago.Writer
	client *kafkago.Client
	// now is the clock of envelope ts_ms and heartbeats (tests pin it).
	now func() time.Time

	durable atomic.Uint64
	err     error

	// buf holds encoded records not yet written, marks the transactions
	// completed within it.
	buf      []record
	bufBytes int
	marks    []mark
	roundOf  []int

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

// record is one encoded Kafka record on its way to its partition.
type record struct {
	topic     string
	partition int
	key       []byte
	value     []byte // nil: a tombstone
	headers   []kafkago.Header
	size      int
}

// mark says that once the first upto buffered records are acknowledged,
// the transaction ending at end is durable.
type mark struct {
	end  promoted.LSN
	upto int
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
	transport := &kafkago.Transport{DialTimeout: cfg.Timeout, IdleTimeout: time.Minute, ClientID: "promoted"}
	s.client = &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Timeout: cfg.Timeout, Transport: transport}
	s.w = &kafkago.Writer{
		Addr:         kafkago.TCP(cfg.Brokers...),
		Balancer:     assigned{},
		RequiredAcks: kafkago.RequireAll,
		BatchSize:    cfg.BatchRecords,
		BatchBytes:   int64(cfg.BatchBytes) * 2,
		// Each write hands over whole batches; nothing waits to fill up.
		BatchTimeout: 100 * time.Microsecond,
		MaxAttempts:  3,
		WriteTimeout: cfg.Timeout,
		ReadTimeout:  cfg.Timeout,
		Transport:    transport,
	}
	return s, nil
}

// SetDurable starts the sink's durable position at lsn: the slot's
// confirmed position when the sink is made, so a quiet tenant's
// heartbeats advance from there.
func (s *Sink) SetDurable(lsn promoted.LSN) {
	if uint64(lsn) > s.durable.Load() {
		s.durable.Store(uint64(lsn))
	}
	if !s.hasCommit {
		s.lastCommit, s.hasCommit = lsn, lsn != 0
	}
}

// Durable is the end LSN of the last transaction all of whose records the
// broker acknowledged (acks=all). It never counts a record still in
// flight.
func (s *Sink) Durable() promoted.LSN { return promoted.LSN(s.durable.Load()) }

// Close releases the producer's connections. Buffered records that were
// not flushed are dropped (they were never durable).
func (s *Sink) Close() error {
	return s.w.Close()
}

// Apply encodes one transaction (or part) into the buffer, writing the
// buffer once it holds --kafka-flush-bytes.
func (s *Sink) Apply(ctx context.Context, txn *promoted.Txn) error {
	if s.err != nil {
		return s.err
	}
	if txn.Heartbeat() {
		if txn.EndLSN <= s.Durable() {
			return nil
		}
		if s.cfg.HeartbeatInterval > 0 && s.now().Sub(s.lastBeat) >= s.cfg.HeartbeatInterval {
			s.lastBeat = s.now()
			key, value := s.heartbeatRecord()
			// HeartbeatImpl sends to partition 0.
			if err := s.add(ctx, record{topic: topicName("__debezium-heartbeat", s.cfg.Prefix), key: key, value: value, partition: -1}, nil); err != nil {
				return s.fail(err)
			}
		}
		s.marks = append(s.marks, mark{end: txn.EndLSN, upto: len(s.buf)})
		if len(s.buf) == 0 {
			s.settle()
		}
		return nil
	}
	if err := s.applyTxn(ctx, txn); err != nil {
		return s.fail(err)
	}
	if s.bufBytes >= s.cfg.FlushBytes {
		return s.Flush(ctx)
	}
	return nil
}

func (s *Sink) applyTxn(ctx context.Context, txn *promoted.Txn) error {
	if !s.txn.open || s.txn.xid != txn.Xid || s.txn.final != txn.FinalLSN {
		s.txn = txnState{open: true, xid: txn.Xid, final: txn.FinalLSN}
	}
	if s.cfg.TransactionMetadata && !s.txn.begun && len(txn.Changes) > 0 {
		// Debezium's BEGIN id carries the LSN of the transaction's first
		// WAL record; the first change's is the closest the stream keeps.
		s.txn.begun = true
		first := txn.Changes[0].LSN
		id := txnID(txn.Xid, first)
		if err := s.add(ctx, record{topic: topicName(s.cfg.Prefix, "transaction"), key: s.txnKey(id),
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
		if err := s.add(ctx, record{topic: topicName(s.cfg.Prefix, "transaction"), key: s.txnKey(id),
			value: s.txnValue("END", id, &s.txn, txn.CommitTime)}, &Position{Commit: txn.FinalLSN, LSN: txn.EndLSN}); err != nil {
			return err
		}
	}
	s.txn = txnState{}
	s.lastCommit, s.hasCommit = txn.EndLSN, true
	s.marks = append(s.marks, mark{end: txn.EndLSN, upto: len(s.buf)})
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
		return s.emit(ctx, te, &envelope{op: 'c', after: c.New, src: src, txBlock: block()}, c.New, pos, nil)
	case promoted.Update:
		after := c.New
		full := t.ReplicaIdentity == 'f' && c.KeyColumns == nil && c.Key != nil
		if full {
			// REPLICA IDENTITY FULL sends the whole old row, whose values
			// stand in for unchanged TOAST values of the new one.
			after = withOldToasted(c.New, c.Key)
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
	key, err := te.keyJSON(keyRow)
	if err != nil {
		return err
	}
	value, err := s.valueJSON(te, e)
	if err != nil {
		return err
	}
	s.m.op(e.op)
	return s.add(ctx, record{topic: te.topic, key: key, value: value, headers: headers}, &pos)
}

func (s *Sink) tombstone(ctx context.Context, te *tableEnc, keyRow promoted.Row, pos Position, headers []kafkago.Header) error {
	if !s.cfg.Tombstones {
		return nil
	}
	key, err := te.keyJSON(keyRow)
	if err != nil {
		return err
	}
	return s.add(ctx, record{topic: te.topic, key: key, headers: headers}, &pos)
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
