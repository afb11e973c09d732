package stream

import (
	"encoding/binary"
	"fmt"

	"github.com/jackc/pglogrepl"
)

// parseMessage decodes one pgoutput message. Row changes (Insert, Update,
// Delete), which are nearly every message of a drain, are decoded here
// with three allocations per tuple: pglogrepl.Parse makes two per column
// and copies the bytes one at a time, which was a fifth of promoted's CPU
// in a backlog drain, on the core the target's own apply shares. The
// messages are pglogrepl's, so everything after decoding is unchanged.
// Unlike pglogrepl's decoder, a truncated message is an error, not a
// panic.
func parseMessage(src []byte) (pglogrepl.Message, error) {
	if len(src) == 0 {
		return nil, fmt.Errorf("empty message")
	}
	switch src[0] {
	case 'I', 'U', 'D':
	default:
		return pglogrepl.Parse(src)
	}
	// The receive buffer is reused by the next message: one copy of the
	// whole message, which every column's Data then points into.
	d := &decoder{b: append([]byte(nil), src[1:]...)}
	rel := d.uint32()
	switch src[0] {
	case 'I':
		m := &pglogrepl.InsertMessage{RelationID: rel}
		if k := d.byte(); k != 'N' && d.err == nil {
			return nil, fmt.Errorf("insert: tuple type %q, want 'N'", k)
		}
		m.Tuple = d.tuple()
		m.SetType(pglogrepl.MessageTypeInsert)
		return m, d.done("insert")
	case 'U':
		m := &pglogrepl.UpdateMessage{RelationID: rel}
		k := d.byte()
		if k == 'K' || k == 'O' {
			m.OldTupleType, m.OldTuple = k, d.tuple()
			k = d.byte()
		}
		if k != 'N' && d.err == nil {
			return nil, fmt.Errorf("update: tuple type %q, want 'K', 'O' or 'N'", k)
		}
		m.NewTuple = d.tuple()
		m.SetType(pglogrepl.MessageTypeUpdate)
		return m, d.done("update")
	default:
		m := &pglogrepl.DeleteMessage{RelationID: rel}
		k := d.byte()
		if k != 'K' && k != 'O' && d.err == nil {
			return nil, fmt.Errorf("delete: tuple type %q, want 'K' or 'O'", k)
		}
		m.OldTupleType, m.OldTuple = k, d.tuple()
		m.SetType(pglogrepl.MessageTypeDelete)
		return m, d.done("delete")
	}
}

// decoder reads a message it owns, remembering the first overrun.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) need(n int) bool {
	if d.err == nil && d.off+n > len(d.b) {
		d.err = fmt.Errorf("message truncated at byte %d of %d (need %d more)", d.off, len(d.b), n)
	}
	return d.err == nil
}

func (d *decoder) byte() byte {
	if !d.need(1) {
		return 0
	}
	d.off++
	return d.b[d.off-1]
}

func (d *decoder) uint32() uint32 {
	if !d.need(4) {
		return 0
	}
	d.off += 4
	return binary.BigEndian.Uint32(d.b[d.off-4:])
}

// tuple reads a TupleData: a column count, then each column's kind and,
// for text or binary, its length and bytes.
func (d *decoder) tuple() *pglogrepl.TupleData {
	if !d.need(2) {
		return nil
	}
	n := int(binary.BigEndian.Uint16(d.b[d.off:]))
	d.off += 2
	t := &pglogrepl.TupleData{ColumnNum: uint16(n), Columns: make([]*pglogrepl.TupleDataColumn, n)}
	cols := make([]pglogrepl.TupleDataColumn, n)
	for i := range cols {
		c := &cols[i]
		t.Columns[i] = c
		c.DataType = d.byte()
		switch c.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			c.Length = d.uint32()
			if !d.need(int(c.Length)) {
				return nil
			}
			c.Data = d.b[d.off : d.off+int(c.Length) : d.off+int(c.Length)]
			d.off += int(c.Length)
		case pglogrepl.TupleDataTypeNull, pglogrepl.TupleDataTypeToast:
		default:
			if d.err == nil {
				d.err = fmt.Errorf("column %d: unknown tuple data type %q", i+1, c.DataType)
			}
		}
		if d.err != nil {
			return nil
		}
	}
	return t
}

func (d *decoder) done(what string) error {
	if d.err != nil {
		return fmt.Errorf("%s: %w", what, d.err)
	}
	return nil
}
