package kafka

import (
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/promoted/promoted"
)

// tableEnc holds one table's precomputed topic, columns and the rendered
// schema parts of its keys and values.
type tableEnc struct {
	table      *promoted.Table
	index      int
	topic      string
	collection string // Debezium's data collection id: schema.table
	cols       []encCol
	key        []encCol
	// keyHead and valueHead are `{"schema":…,"payload":` (empty with
	// --no-schema); the payload and a closing brace follow. Rendered once:
	// they are most of a record's bytes.
	keyHead, valueHead []byte
	// srcTable is the source block's table part, up to txId's value.
	srcTable []byte
}

type encCol struct {
	idx  int
	name string
	// label is the name as a JSON object key, with its colon.
	label    []byte
	codec    *codec
	optional bool
}

func newTableEnc(cfg *Config, t *promoted.Table, index int, types *Types, log *slog.Logger) (*tableEnc, error) {
	te := &tableEnc{table: t, index: index, topic: topicName(cfg.Prefix, t.Schema, t.Name), collection: t.Schema + "." + t.Name}
	byIdx := map[int]encCol{}
	var valueFields []field
	for i, c := range t.Columns {
		if c.Generated {
			// pgoutput never sends generated columns, and Debezium's
			// streamed schema (rebuilt from the Relation message) has none.
			continue
		}
		ct := types.Column(t, c.Name)
		if ct == nil {
			return nil, fmt.Errorf("encode %s: no catalog information for column %s (LoadTypes was not given this table)", t, c.Name)
		}
		cd := newCodec(ct, cfg.DecimalHandling)
		if cd == nil {
			log.Warn("column left out of the Kafka records: Debezium has no encoding for its type by default", "table", t.String(), "column", c.Name, "type", c.Type)
			continue
		}
		ec := encCol{idx: i, name: c.Name, label: append(appendJSONString(nil, c.Name), ':'), codec: cd, optional: !c.NotNull}
		byIdx[i] = ec
		te.cols = append(te.cols, ec)
		valueFields = append(valueFields, field{c.Name, cd.schema.withOptional(ec.optional)})
	}
	var keyFields []field
	for _, k := range t.PrimaryKey {
		ec, ok := byIdx[k]
		if !ok {
			return nil, fmt.Errorf("encode %s: primary key column %s has a type the Kafka records cannot carry", t, t.Columns[k].Name)
		}
		te.key = append(te.key, ec)
		keyFields = append(keyFields, field{ec.name, ec.codec.schema.withOptional(ec.optional)})
	}
	if len(te.key) == 0 {
		return nil, fmt.Errorf("encode %s: the table has no primary key, which Debezium's record key needs", t)
	}
	te.srcTable = append(appendJSONString([]byte(`,"schema":`), t.Schema), `,"table":`...)
	te.srcTable = append(appendJSONString(te.srcTable, t.Name), `,"txId":`...)
	if !cfg.NoSchema {
		keySchema := &schema{typ: "struct", name: te.topic + ".Key", fields: keyFields}
		value := &schema{typ: "struct", optional: true, name: te.topic + ".Value", fields: valueFields}
		te.keyHead = append(keySchema.appendJSON([]byte(`{"schema":`)), `,"payload":`...)
		te.valueHead = append(envelopeSchema(te.topic+".Envelope", value).appendJSON([]byte(`{"schema":`)), `,"payload":`...)
	}
	return te, nil
}

// appendRow appends a row struct. Columns outside only (when set) are
// absent from the row (an old-key tuple): they are written as null, or as
// Debezium's fallback value when the column is NOT NULL. Unchanged TOAST
// values become Debezium's placeholder.
func (te *tableEnc) appendRow(b []byte, cols []encCol, row promoted.Row, only func(int) bool) ([]byte, error) {
	b = append(b, '{')
	for i, c := range cols {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, c.label...)
		v := row[c.idx]
		if only != nil && !only(c.idx) {
			v = promoted.Value{Kind: promoted.Null}
		}
		switch v.Kind {
		case promoted.Null:
			if c.optional {
				b = append(b, "null"...)
			} else {
				b = append(b, c.codec.fallback...)
			}
		case promoted.Unchanged:
			if c.codec.toast == nil {
				return b, fmt.Errorf("encode %s: column %s is an unchanged TOAST value of type %s, for which Debezium's format has no placeholder", te.table, c.name, c.codec.typ)
			}
			b = append(b, c.codec.toast...)
		default:
			var err error
			if b, err = c.codec.appendText(b, v.Data); err != nil {
				return b, fmt.Errorf("encode %s column %s: %w", te.table, c.name, err)
			}
		}
	}
	return append(b, '}'), nil
}

// appendKey appends the record key of a row.
func (te *tableEnc) appendKey(b []byte, row promoted.Row) ([]byte, error) {
	b = append(b, te.keyHead...)
	b, err := te.appendRow(b, te.key, row, nil)
	if err != nil {
		return nil, err
	}
	if len(te.keyHead) > 0 {
		b = append(b, '}')
	}
	return b, nil
}

// source is what a record's source block says.
type source struct {
	ts         time.Time
	snapshot   string // "" is streaming ("false")
	lastCommit promoted.LSN
	hasCommit  bool
	lsn        promoted.LSN
	txID       int64 // 0: null
}

// appendSource writes io.debezium.connector.postgresql.Source.
func (s *Sink) appendSource(b []byte, te *tableEnc, src source) []byte {
	// ts_ms, ts_us and ts_ns are the same instant in microseconds: its
	// digits are formatted once.
	var d [24]byte
	us := src.ts.UnixMicro()
	micros := strconv.AppendInt(d[:0], us, 10)
	b = append(b, s.srcHead...)
	if us >= 1000 {
		b = append(b, micros[:len(micros)-3]...)
	} else {
		b = strconv.AppendInt(b, src.ts.UnixMilli(), 10)
	}
	b = append(b, `,"snapshot":`...)
	if src.snapshot == "" {
		b = append(b, `"false"`...)
	} else {
		b = appendJSONString(b, src.snapshot)
	}
	b = append(b, s.srcDB...)
	// sequence: Jackson's rendering of [lastCommitLsn, lsn] as strings,
	// itself a JSON string.
	if src.hasCommit {
		b = append(b, `"[\"`...)
		b = strconv.AppendUint(b, uint64(src.lastCommit), 10)
		b = append(b, `\",\"`...)
	} else {
		b = append(b, `"[null,\"`...)
	}
	b = strconv.AppendUint(b, uint64(src.lsn), 10)
	b = append(b, `\"]"`...)
	b = append(b, `,"ts_us":`...)
	b = append(b, micros...)
	b = append(b, `,"ts_ns":`...)
	if us > 0 {
		b = append(append(b, micros...), "000"...)
	} else {
		b = strconv.AppendInt(b, us*1000, 10)
	}
	b = append(b, te.srcTable...)
	if src.txID != 0 {
		b = strconv.AppendInt(b, src.txID, 10)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"lsn":`...)
	b = strconv.AppendUint(b, uint64(src.lsn), 10)
	return append(b, `,"xmin":null}`...)
}

// sourceParts renders the sink-wide parts of the source block.
func sourceParts(prefix, database string) (head, db []byte) {
	head = append([]byte(`{"version":"`+DebeziumVersion+`","connector":"postgresql","name":`), appendJSONString(nil, prefix)...)
	head = append(head, `,"ts_ms":`...)
	db = append(appendJSONString([]byte(`,"db":`), database), `,"sequence":`...)
	return head, db
}

// envelope is one change record's value.
type envelope struct {
	op            byte
	before, after promoted.Row
	// beforeOnly restricts before to the key columns (an old-key tuple).
	beforeOnly func(int) bool
	src        source
	// txBlock is the rendered transaction block, or nil.
	txBlock []byte
	// now is the envelope's ts_ms; zero: the clock's now.
	now time.Time
}

// appendValue appends a change record's value after the table's
// valueHead (which the record carries separately): the payload and, with
// a schema, the closing brace.
func (s *Sink) appendValue(b []byte, te *tableEnc, e *envelope) ([]byte, error) {
	b = append(b, `{"before":`...)
	var err error
	if e.before == nil {
		b = append(b, "null"...)
	} else if b, err = te.appendRow(b, te.cols, e.before, e.beforeOnly); err != nil {
		return nil, err
	}
	b = append(b, `,"after":`...)
	if e.after == nil {
		b = append(b, "null"...)
	} else if b, err = te.appendRow(b, te.cols, e.after, nil); err != nil {
		return nil, err
	}
	b = append(b, `,"source":`...)
	b = s.appendSource(b, te, e.src)
	b = append(b, `,"transaction":`...)
	if e.txBlock == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, e.txBlock...)
	}
	b = append(b, `,"op":"`...)
	b = append(b, e.op, '"')
	// ts_ms is when the connector processed the event (Envelope.create
	// and friends take the clock's now).
	now := e.now
	if now.IsZero() {
		now = s.now()
	}
	b = appendInstant(b, now)
	b = append(b, '}')
	if len(te.valueHead) > 0 {
		b = append(b, '}')
	}
	return b, nil
}

// appendInstant appends an envelope's ts_ms, ts_us and ts_ns, the
// nanoseconds formatted once (the others are their leading digits).
func appendInstant(b []byte, t time.Time) []byte {
	ns := t.UnixNano()
	if ns < 1e6 {
		b = append(b, `,"ts_ms":`...)
		b = strconv.AppendInt(b, t.UnixMilli(), 10)
		b = append(b, `,"ts_us":`...)
		b = strconv.AppendInt(b, t.UnixMicro(), 10)
		b = append(b, `,"ts_ns":`...)
		return strconv.AppendInt(b, ns, 10)
	}
	var d [24]byte
	nanos := strconv.AppendInt(d[:0], ns, 10)
	b = append(b, `,"ts_ms":`...)
	b = append(b, nanos[:len(nanos)-6]...)
	b = append(b, `,"ts_us":`...)
	b = append(b, nanos[:len(nanos)-3]...)
	b = append(b, `,"ts_ns":`...)
	return append(b, nanos...)
}

// appendTxBlock renders the transaction block of a change (event.block),
// with PostgresTransactionMonitor's id: the xid and the change's own LSN.
func appendTxBlock(b []byte, xid uint32, lsn promoted.LSN, total, perCollection int64) []byte {
	b = append(b, `{"id":"`...)
	b = strconv.AppendUint(b, uint64(xid), 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, uint64(lsn), 10)
	b = append(b, `","total_order":`...)
	b = strconv.AppendInt(b, total, 10)
	b = append(b, `,"data_collection_order":`...)
	b = strconv.AppendInt(b, perCollection, 10)
	return append(b, '}')
}
