package kafka

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
)

// SnapshotInfo says where the snapshot's rows come from: the position of
// the exported snapshot they were read in (source.lsn; streaming starts
// there) and, when known, that transaction's id (source.txId).
type SnapshotInfo struct {
	LSN  promoted.LSN
	TxID int64
}

// snapshotHeader carries a snapshot record's progress, for Resume.
const snapshotHeader = "promoted.snapshot"

// snapshotMark is the snapshot header's content.
type snapshotMark struct {
	// Table is the table's index in the sink's tables; Seq orders the
	// snapshot's records.
	Table int   `json:"table"`
	Seq   int64 `json:"seq"`
	// Done is how many tables (in order) were wholly acknowledged when the
	// record was written.
	Done int `json:"done"`
	// After is the primary key (as PostgreSQL text) of the table's last
	// row acknowledged before this record was written; nil: none.
	After []string `json:"after"`
}

// snapshotRun follows a snapshot being written. Like Debezium's
// BufferingSnapshotChangeRecordReceiver it holds back the last row read,
// whose marker (source.snapshot) depends on what comes after it.
type snapshotRun struct {
	info    SnapshotInfo
	started bool
	held    *heldRow
	seq     int64
	// done counts tables whose last row is acknowledged; emittedTo counts
	// tables whose last row is encoded (in a batch), to count once that
	// batch is acknowledged.
	done      int
	emittedTo int
	// after is, by table index, the snapshot header's "after": the key of
	// the table's last acknowledged row as a JSON array.
	after   map[int][]byte
	current *tableEnc
	// hdr is the header of the record being encoded.
	hdr [1]kafkago.Header
}

type heldRow struct {
	te                        *tableEnc
	row                       promoted.Row
	firstInTable, lastInTable bool
}

// StartSnapshot begins writing a snapshot taken at info.
func (s *Sink) StartSnapshot(info SnapshotInfo) {
	s.snap = snapshotRun{info: info, started: true, after: map[int][]byte{}}
}

// SnapshotRows writes a batch of t's rows (op "r"): it encodes them and
// hands them to the broker, having waited for the acks of the batch before
// (so the next batch is read and encoded while this one is written).
// last says that the batch ends the table. Tables come in
// the order the sink was made with; the markers follow Debezium 2.7
// (source.snapshot "first", "first_in_data_collection", "true",
// "last_in_data_collection", and "last" for the snapshot's very last row,
// written by FinishSnapshot).
func (s *Sink) SnapshotRows(ctx context.Context, t *promoted.Table, rows []promoted.Row, last bool) error {
	if s.err != nil {
		return s.err
	}
	if !s.snap.started {
		return fmt.Errorf("snapshot of %s: StartSnapshot was not called", t)
	}
	te := s.tables[t]
	if te == nil {
		return fmt.Errorf("snapshot of %s: the sink was not made for this table", t)
	}
	first := s.snap.current != te
	s.snap.current = te
	for i, row := range rows {
		next := &heldRow{te: te, row: row, firstInTable: first && i == 0, lastInTable: last && i == len(rows)-1}
		if s.cur.bytes >= s.cfg.FlushBytes {
			if err := s.handoff(ctx); err != nil {
				return err
			}
		}
		if err := s.releaseHeld(ctx, false); err != nil {
			return s.fail(err)
		}
		s.snap.held = next
	}
	if last && len(rows) == 0 {
		if h := s.snap.held; h != nil && h.te == te {
			// The table ended exactly at a batch boundary: the held row
			// is its last.
			h.lastInTable = true
		} else if first {
			// An empty table: nothing to write, and nothing to wait for.
			s.snap.emittedTo = max(s.snap.emittedTo, te.index+1)
		}
	}
	return s.handoff(ctx)
}

// FinishSnapshot writes the snapshot's last row (marked "last") and waits
// for its ack.
func (s *Sink) FinishSnapshot(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	if err := s.releaseHeld(ctx, true); err != nil {
		return s.fail(err)
	}
	if err := s.Flush(ctx); err != nil {
		return err
	}
	s.snap.started = false
	return nil
}

func (s *Sink) releaseHeld(ctx context.Context, final bool) error {
	h := s.snap.held
	if h == nil {
		return nil
	}
	s.snap.held = nil
	firstTable := h.te.index == 0
	lastTable := h.te.index == len(s.order)-1
	marker := "true"
	switch {
	case final || (h.lastInTable && lastTable):
		marker = "last"
	case h.firstInTable && firstTable:
		marker = "first"
	case h.lastInTable:
		marker = "last_in_data_collection"
	case h.firstInTable:
		marker = "first_in_data_collection"
	}
	now := s.now()
	src := source{ts: now, snapshot: marker, lsn: s.snap.info.LSN, txID: s.snap.info.TxID}
	var err error
	if s.keyBuf, err = h.te.appendKey(s.keyBuf[:0], h.row); err != nil {
		return err
	}
	if s.valBuf, err = s.appendValue(s.valBuf[:0], h.te, &envelope{op: 'r', after: h.row, src: src, now: now}); err != nil {
		return err
	}
	s.snap.seq++
	s.hdrBuf = s.appendSnapshotMark(s.hdrBuf[:0], h.te.index)
	s.snap.hdr[0] = kafkago.Header{Key: snapshotHeader, Value: s.hdrBuf}
	s.m.op('r')
	if err := s.add(ctx, &record{topic: h.te.topic, key: s.keyBuf, head: h.te.valueHead, value: s.valBuf, headers: s.snap.hdr[:]}, nil); err != nil {
		return err
	}
	b := s.cur
	if b.snapLast == nil {
		b.snapLast = make([]promoted.Row, len(s.order))
	}
	b.snapLast[h.te.index] = h.row
	if h.lastInTable {
		s.snap.emittedTo = max(s.snap.emittedTo, h.te.index+1)
	}
	return nil
}

// appendSnapshotMark renders the snapshot header (a snapshotMark) of the
// record being encoded, from what acknowledged batches completed.
func (s *Sink) appendSnapshotMark(b []byte, table int) []byte {
	b = append(b, `{"table":`...)
	b = strconv.AppendInt(b, int64(table), 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, s.snap.seq, 10)
	b = append(b, `,"done":`...)
	b = strconv.AppendInt(b, int64(s.snap.done), 10)
	b = append(b, `,"after":`...)
	if a := s.snap.after[table]; a != nil {
		b = append(b, a...)
	} else {
		b = append(b, "null"...)
	}
	return append(b, '}')
}

// snapDone is how many tables will be wholly written once what is
// encoded so far is acknowledged: not a table whose last row is still
// held back.
func (s *Sink) snapDone() int {
	done := s.snap.emittedTo
	if h := s.snap.held; h != nil && h.te.index < done {
		done = h.te.index
	}
	return done
}

// completed notes what an acknowledged batch completes of the snapshot:
// each table's last row in it, and the tables wholly written.
func (s *Sink) completed(b *batch) {
	for t, row := range b.snapLast {
		if row != nil && s.snap.after != nil {
			a := []byte{'['}
			for i, k := range pkText(s.order[t].table, row) {
				if i > 0 {
					a = append(a, ',')
				}
				a = appendJSONString(a, k)
			}
			s.snap.after[t] = append(a, ']')
		}
	}
	s.snap.done = max(s.snap.done, b.snapDone)
}

// pkText is a row's primary key as PostgreSQL text, in key order.
func pkText(t *promoted.Table, row promoted.Row) []string {
	out := make([]string, len(t.PrimaryKey))
	for i, k := range t.PrimaryKey {
		out[i] = string(row[k].Data)
	}
	return out
}

// SnapshotTable reads t's tenant rows in primary key order, in text format
// (under the pinned GUCs the connection must have), and writes them in
// batches of batch rows. conn must already be inside the REPEATABLE READ
// transaction that imported the snapshot (SET TRANSACTION SNAPSHOT). With
// after (a primary key from Resume) it continues after that row.
func (s *Sink) SnapshotTable(ctx context.Context, conn *pgx.Conn, t *promoted.Table, after []string, batch int) error {
	if batch <= 0 {
		batch = 1000
	}
	var cols, pk []string
	var idx []int
	for i, c := range t.Columns {
		if !c.Generated {
			cols = append(cols, promoted.QuoteIdent(c.Name))
			idx = append(idx, i)
		}
	}
	var args []any
	where := t.TenantPredicate()
	for i, k := range t.PrimaryKey {
		pk = append(pk, promoted.QuoteIdent(t.Columns[k].Name))
		if after != nil {
			args = append(args, after[i])
		}
	}
	if after != nil {
		ph := make([]string, len(t.PrimaryKey))
		for i, k := range t.PrimaryKey {
			ph[i] = fmt.Sprintf("$%d::%s", i+1, t.Columns[k].Type)
		}
		where += " AND (" + strings.Join(pk, ", ") + ") > (" + strings.Join(ph, ", ") + ")"
	}
	q := "SELECT " + strings.Join(cols, ", ") + " FROM " + promoted.QuoteIdent(t.Schema) + "." + promoted.QuoteIdent(t.Name) +
		" WHERE " + where + " ORDER BY " + strings.Join(pk, ", ")
	all := append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)
	rows, err := conn.Query(ctx, q, all...)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", t, err)
	}
	defer rows.Close()
	// Each batch's rows and values live in a few large allocations of its
	// own (not reused: the sink keeps the last rows until acknowledged).
	var (
		buf   []promoted.Row
		vals  []promoted.Value
		arena []byte
	)
	for rows.Next() {
		raw := rows.RawValues()
		if len(vals) < len(t.Columns) {
			vals = make([]promoted.Value, batch*len(t.Columns))
		}
		row := promoted.Row(vals[:len(t.Columns):len(t.Columns)])
		vals = vals[len(t.Columns):]
		for i := range row {
			row[i].Kind = promoted.Unchanged
		}
		for j, v := range raw {
			if v == nil {
				row[idx[j]] = promoted.Value{Kind: promoted.Null}
				continue
			}
			if len(arena)+len(v) > cap(arena) {
				arena = make([]byte, 0, max(256<<10, len(v)))
			}
			arena = append(arena, v...)
			row[idx[j]] = promoted.Value{Kind: promoted.Text, Data: arena[len(arena)-len(v) : len(arena) : len(arena)]}
		}
		buf = append(buf, row)
		if len(buf) == batch {
			if err := s.SnapshotRows(ctx, t, buf, false); err != nil {
				return err
			}
			buf, vals, arena = nil, nil, nil
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("snapshot %s: %w", t, err)
	}
	return s.SnapshotRows(ctx, t, buf, true)
}
