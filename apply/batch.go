package apply

import (
	"slices"
	"strconv"
	"strings"

	"github.com/promoted/promoted"
)

// A source transaction is mostly small changes: an insert here, an update
// there. Applied one statement each, the target spends its time starting
// statements, not changing rows. So within one target transaction the sink
// gathers changes into set-based statements per table: multi-row INSERTs
// (and upserts), and UPDATE ... FROM (VALUES ...) and DELETE ... USING
// (VALUES ...) for many keys at once.
//
// That reorders changes, which is safe here and only here:
//   - Across tables: the apply runs with session_replication_role =
//     replica, so no trigger and no foreign key ties one table's statement
//     to another's; the group commits as one transaction.
//   - Within a table, changes of different primary keys commute: a row is
//     only ever touched through its own key. A change of a key already
//     pending flushes the table's pending statements first, so each key's
//     changes keep their order.
//   - A table with another unique constraint or an exclusion constraint
//     keeps its changes in order (a reordered pair could collide there
//     mid-transaction): a change of another kind flushes it.
//   - Updates and deletes are set-based only when every key and set column
//     is of a built-in type, whose name means the same on the target;
//     others go one statement each, after the table's pending ones.

// batchKind is what a pending batch does.
type batchKind uint8

const (
	bInsert batchKind = iota
	bUpsert
	bUpdate
	bDelete
	bDeleteLenient
)

// batch is the pending changes of one kind and shape on one table.
type batch struct {
	table  *promoted.Table
	kind   batchKind
	cols   []int // inserted, upserted or set columns
	key    []int // update and delete keys
	params [][]byte
	rows   int
	first  *promoted.Change
}

func (b *batch) same(kind batchKind, cols, key []int) bool {
	return b.kind == kind && slices.Equal(b.cols, cols) && slices.Equal(b.key, key)
}

// pending is the open target transaction's batches, per table.
type pending struct {
	open map[*promoted.Table][]*batch
	keys map[*promoted.Table]map[string]bool
}

// maxRowsPerStatement bounds a set-based statement; flushes use 64, 16, 4
// and 1 rows, so each table and shape prepares at most four statements.
const maxRowsPerStatement = 64

func keyID(row promoted.Row, key []int) string {
	var b strings.Builder
	for _, k := range key {
		if row[k].Kind == promoted.Text {
			b.WriteByte('t')
			b.Write(row[k].Data)
		} else {
			b.WriteByte('n')
		}
		b.WriteByte(0)
	}
	return b.String()
}

// add gathers one change into its table's batch, flushing first whatever
// the change must come after.
func (p *Postgres) add(c *promoted.Change, kind batchKind, cols, key []int, row promoted.Row) {
	t := c.Table
	if p.pend.open == nil {
		p.pend.open = map[*promoted.Table][]*batch{}
		p.pend.keys = map[*promoted.Table]map[string]bool{}
	}
	ids := []string{keyID(row, t.PrimaryKey)}
	if kind == bUpdate || kind == bDelete || kind == bDeleteLenient {
		ids = append(ids, keyID(c.Key, key))
	}
	for _, id := range ids {
		if p.pend.keys[t][id] {
			p.flushTable(t)
			break
		}
	}
	open := p.pend.open[t]
	var b *batch
	for _, o := range open {
		if o.same(kind, cols, key) {
			b = o
		}
	}
	if b == nil && t.OtherUnique && len(open) > 0 {
		// Keep this table's changes in their order: flush the other kind.
		p.flushTable(t)
		open = nil
	}
	if b == nil {
		b = &batch{table: t, kind: kind, cols: cols, key: key, first: c}
		p.pend.open[t] = append(open, b)
	}
	switch kind {
	case bInsert, bUpsert:
		b.params = append(b.params, params(row, cols)...)
	case bUpdate:
		b.params = append(append(b.params, params(c.Key, key)...), params(row, cols)...)
	case bDelete, bDeleteLenient:
		b.params = append(b.params, params(c.Key, key)...)
	}
	b.rows++
	if p.pend.keys[t] == nil {
		p.pend.keys[t] = map[string]bool{}
	}
	for _, id := range ids {
		p.pend.keys[t][id] = true
	}
	if b.rows == maxRowsPerStatement {
		p.flushTable(t)
	}
}

// setBased reports whether updates and deletes of t through key (setting
// cols) can be set-based: every column's type is built in.
func setBased(t *promoted.Table, key, cols []int) bool {
	for _, list := range [][]int{key, cols} {
		for _, c := range list {
			if o := t.Columns[c].TypeOID; o == 0 || o >= promoted.FirstUserOID {
				return false
			}
		}
	}
	return true
}

// flushTable queues the table's pending batches as statements.
func (p *Postgres) flushTable(t *promoted.Table) {
	for _, b := range p.pend.open[t] {
		p.queueBatch(b)
	}
	delete(p.pend.open, t)
	delete(p.pend.keys, t)
}

// flushAll queues every pending batch, table by table in a stable order.
func (p *Postgres) flushAll() {
	if len(p.pend.open) == 0 {
		return
	}
	tables := make([]*promoted.Table, 0, len(p.pend.open))
	for t := range p.pend.open {
		tables = append(tables, t)
	}
	slices.SortFunc(tables, func(a, b *promoted.Table) int { return strings.Compare(a.String(), b.String()) })
	for _, t := range tables {
		p.flushTable(t)
	}
}

// shapeKey names a set-based statement: the same key means the same SQL,
// built once.
type shapeKey struct {
	t          *promoted.Table
	kind       batchKind
	rows       int
	cols, keys string
}

func intsKey(xs []int) string {
	b := make([]byte, 0, 2*len(xs))
	for _, x := range xs {
		b = append(b, byte(x), byte(x>>8))
	}
	return string(b)
}

// batchSQL is the statement for rows rows of the batch's shape.
func (p *Postgres) batchSQL(b *batch, rows int) string {
	k := shapeKey{t: b.table, kind: b.kind, rows: rows, cols: intsKey(b.cols), keys: intsKey(b.key)}
	if sql, ok := p.shapes[k]; ok {
		return sql
	}
	var sql string
	switch b.kind {
	case bInsert:
		sql = p.sql.insertRows(b.table, b.cols, rows)
	case bUpsert:
		sql = p.sql.upsertRows(b.table, b.cols, rows)
	case bUpdate:
		sql = p.sql.updateRows(b.table, b.cols, b.key, rows)
	case bDelete, bDeleteLenient:
		sql = p.sql.deleteRows(b.table, b.key, rows)
	}
	if p.shapes == nil {
		p.shapes = map[shapeKey]string{}
	}
	p.shapes[k] = sql
	return sql
}

// queueBatch queues a batch as a few statements of 64, 16, 4 and 1 rows,
// each checked to have touched exactly its rows (upserts and lenient
// deletes excepted: the target may or may not hold those rows).
func (p *Postgres) queueBatch(b *batch) {
	per := len(b.params) / b.rows
	prm, rows := b.params, b.rows
	for _, size := range []int{64, 16, 4, 1} {
		for rows >= size {
			sql := p.batchSQL(b, size)
			c := check{c: b.first, rows: int64(size), keyCols: b.key}
			if (b.kind == bUpsert && !guardedUpsert(b.table)) || b.kind == bDeleteLenient {
				c.rows = 0
			}
			if size == 1 && c.rows == 1 {
				c.rows, c.exactOne = 0, true
				if b.kind == bInsert {
					c.exactOne = false // an insert fails rather than touch 0 rows
				}
			}
			p.queueRaw(sql, prm[:size*per], c)
			prm, rows = prm[size*per:], rows-size
		}
	}
}

// valuesList is ($1::t1, $2::t2), ($3::t1, $4::t2)... for rows rows of the
// given casts.
func valuesList(casts []string, rows int) string {
	var b strings.Builder
	n := 0
	for r := 0; r < rows; r++ {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(")
		for i, c := range casts {
			if i > 0 {
				b.WriteString(", ")
			}
			n++
			b.WriteString("$" + strconv.Itoa(n) + c)
		}
		b.WriteString(")")
	}
	return b.String()
}

// insertRows is INSERT of rows rows of the given columns.
func (s statements) insertRows(t *promoted.Table, cols []int, rows int) string {
	one := s.insert(t, cols)
	if rows == 1 {
		return one
	}
	casts := make([]string, len(cols))
	return strings.Replace(one, "VALUES "+valuesList(casts, 1), "VALUES "+valuesList(casts, rows), 1)
}

// upsertRows is a multi-row upsert; a batch never holds one key twice.
func (s statements) upsertRows(t *promoted.Table, cols []int, rows int) string {
	one := s.upsert(t, cols)
	if rows == 1 {
		return one
	}
	casts := make([]string, len(cols))
	return strings.Replace(one, "VALUES "+valuesList(casts, 1), "VALUES "+valuesList(casts, rows), 1)
}

func typeCasts(t *promoted.Table, cols []int) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = "::" + t.Columns[c].Type
	}
	return out
}

// valuesAlias names the VALUES columns k0.. for the key and c0.. for the
// set columns, so no name can clash with the table's.
func valuesAlias(key, cols []int) string {
	names := make([]string, 0, len(key)+len(cols))
	for i := range key {
		names = append(names, "k"+strconv.Itoa(i))
	}
	for i := range cols {
		names = append(names, "c"+strconv.Itoa(i))
	}
	return "promoted_v(" + strings.Join(names, ", ") + ")"
}

func keyJoin(t *promoted.Table, key []int) string {
	parts := make([]string, len(key))
	for i, k := range key {
		parts[i] = "promoted_t." + ident(t.Columns[k].Name) + " = promoted_v.k" + strconv.Itoa(i)
	}
	return strings.Join(parts, " AND ") + tenantGuard(t, key, "promoted_t")
}

// updateRows sets cols of rows rows found by key: each row's parameters
// are its key, then its set columns.
func (statements) updateRows(t *promoted.Table, cols, key []int, rows int) string {
	sets := make([]string, len(cols))
	for i, c := range cols {
		sets[i] = ident(t.Columns[c].Name) + " = promoted_v.c" + strconv.Itoa(i)
	}
	return "UPDATE " + qualified(t) + " AS promoted_t SET " + strings.Join(sets, ", ") +
		" FROM (VALUES " + valuesList(append(typeCasts(t, key), typeCasts(t, cols)...), rows) + ") AS " + valuesAlias(key, cols) +
		" WHERE " + keyJoin(t, key)
}

// deleteRows deletes rows rows found by key.
func (statements) deleteRows(t *promoted.Table, key []int, rows int) string {
	return "DELETE FROM " + qualified(t) + " AS promoted_t USING (VALUES " + valuesList(typeCasts(t, key), rows) + ") AS " +
		valuesAlias(key, nil) + " WHERE " + keyJoin(t, key)
}
