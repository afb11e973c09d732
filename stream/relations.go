package stream

import (
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/promoted/promoted"
)

// relation maps one pgoutput Relation message onto a planned table. pgoutput
// numbers relations by OID and sends their column list before first use and
// after every change to the definition, so the map is rebuilt on each
// Relation message, once relationChange has compared it with the table's
// definition: a column retyped on the source (or added or dropped, unless
// the stream follows those) stops the stream with a clear error rather
// than losing or misplacing a value (docs/hazards.md 2.3, 7.3).
type relation struct {
	table *promoted.Table
	// cols[i] is the index in table.Columns of the relation's i-th column.
	cols []int
	// identity lists the table columns pgoutput marks as replica identity.
	identity []int
	// keyInIdentity is true when every primary-key column is part of the
	// replica identity, so old-key tuples carry the primary key.
	keyInIdentity bool
	// virtual is the index of a tenant column the source table lacks
	// (promoted.Column.Virtual), filled with the tenant into every row,
	// or -1.
	virtual int
}

// ErrSchemaChanged reports DDL on a moved table during the move.
type ErrSchemaChanged struct {
	Table  string
	Detail string
}

// Fatal marks the error as one no retry can fix.
func (e *ErrSchemaChanged) Fatal() bool { return true }

func (e *ErrSchemaChanged) Error() string {
	return fmt.Sprintf("table %s changed on the source during the move (%s): schema changes are not supported yet; cancel the move with `promoted cancel`, apply the same change to the target, and start again", e.Table, e.Detail)
}

// mapRelation maps a Relation message onto the table's definition, which
// relationChange has already checked against it (or followed).
func mapRelation(m *pglogrepl.RelationMessage, table *promoted.Table) (*relation, error) {
	r := &relation{table: table, cols: make([]int, len(m.Columns)), virtual: -1}
	if table.Whole() {
		// A constant is part of every identity.
		r.virtual = table.Tenant
		r.identity = append(r.identity, table.Tenant)
	}
	for i, c := range m.Columns {
		idx := table.ColumnIndex(c.Name)
		if idx < 0 {
			return nil, &ErrSchemaChanged{Table: table.String(), Detail: fmt.Sprintf("column %q was added", c.Name)}
		}
		r.cols[i] = idx
		if c.Flags&1 != 0 {
			r.identity = append(r.identity, idx)
		}
	}
	r.keyInIdentity = true
	for _, k := range table.PrimaryKey {
		found := false
		for _, id := range r.identity {
			found = found || id == k
		}
		r.keyInIdentity = r.keyInIdentity && found
	}
	return r, nil
}

// row converts a pgoutput tuple to a Row in the table's column order.
// Generated columns, which pgoutput never sends, are Unchanged.
func (r *relation) row(t *pglogrepl.TupleData) (promoted.Row, error) {
	if t == nil {
		return nil, nil
	}
	if len(t.Columns) != len(r.cols) {
		return nil, fmt.Errorf("table %s: tuple has %d columns, relation has %d", r.table, len(t.Columns), len(r.cols))
	}
	row := make(promoted.Row, len(r.table.Columns))
	for i := range row {
		row[i].Kind = promoted.Unchanged
	}
	if r.virtual >= 0 {
		row[r.virtual] = promoted.Value{Kind: promoted.Text, Data: []byte(r.table.TenantLiteral)}
	}
	for i, c := range t.Columns {
		v := &row[r.cols[i]]
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			v.Kind = promoted.Null
		case pglogrepl.TupleDataTypeToast:
			v.Kind = promoted.Unchanged
		case pglogrepl.TupleDataTypeText:
			v.Kind, v.Data = promoted.Text, c.Data
		default:
			return nil, fmt.Errorf("table %s column %s: unexpected tuple data type %q (binary mode is not used)", r.table, r.table.Columns[r.cols[i]].Name, c.DataType)
		}
	}
	return row, nil
}
