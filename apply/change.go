package apply

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
)

// change queues the statements for one change. Most changes are pipelined;
// the few whose outcome decides the next statement (a row new to the target
// that arrived with unchanged TOAST values) run synchronously, in order.
func (p *Postgres) change(ctx context.Context, c *promoted.Change) error {
	if p.Lose != nil && p.Lose(c) {
		return nil
	}
	t := c.Table
	if c.Op == promoted.Relation {
		return p.relation(ctx, c)
	}
	if c.Op != promoted.Message {
		p.changes.Add(1)
		p.trackChange(c)
	}
	switch c.Op {
	case promoted.Message:
		p.pendMark[string(c.Content)] = 0
		return nil
	case promoted.Insert:
		if hasUnchanged(t, c.New) {
			return p.refetchInsert(ctx, c, c.New)
		}
		p.add(c, bInsert, present(t, c.New, writable), nil, c.New)
	case promoted.Update:
		key := keyCols(c)
		if c.Lenient {
			if hasUnchanged(t, c.New) {
				return p.lenientUpdate(ctx, c)
			}
			if changedKey(t, c) {
				p.one(c, p.sql.delete(t, key), params(c.Key, key), check{c: c})
			}
			p.add(c, bUpsert, present(t, c.New, writable), nil, c.New)
			break
		}
		cols := present(t, c.New, settable)
		if setBased(t, key, cols) {
			p.add(c, bUpdate, cols, key, c.New)
			break
		}
		p.one(c, p.sql.update(t, cols, key), append(params(c.New, cols), params(c.Key, key)...), check{c: c, keyCols: key, exactOne: true})
	case promoted.Delete:
		key := keyCols(c)
		switch {
		case !setBased(t, key, nil):
			p.one(c, p.sql.delete(t, key), params(c.Key, key), check{c: c, keyCols: key, exactOne: !c.Lenient})
		case c.Lenient:
			p.add(c, bDeleteLenient, nil, key, c.Key)
		default:
			p.add(c, bDelete, nil, key, c.Key)
		}
	default:
		return fmt.Errorf("apply: unexpected %s change", c.Op)
	}
	p.m.changes[c.Op].Inc()
	p.txChanges++
	if len(p.checks) >= p.cfg.Pipeline {
		return p.exec(ctx)
	}
	return nil
}

// lenientUpdate applies an update with unchanged TOAST values to a table
// the daemon filters: update the row if the target has it, else the row
// just entered the tenant and is inserted whole, re-read from the source.
func (p *Postgres) lenientUpdate(ctx context.Context, c *promoted.Change) error {
	if err := p.exec(ctx); err != nil {
		return err
	}
	t := c.Table
	key := keyCols(c)
	cols := present(t, c.New, settable)
	tag, err := p.execText(ctx, p.sql.update(t, cols, key), append(params(c.New, cols), params(c.Key, key)...))
	if err != nil {
		p.inTx = false
		return fmt.Errorf("apply update to %s: %w", t, err)
	}
	p.m.changes[c.Op].Inc()
	p.txChanges++
	if tag.RowsAffected() == 1 {
		return nil
	}
	return p.refetchInsert(ctx, c, c.New)
}

// refetchInsert inserts a row the target lacks whose stream image has
// unchanged TOAST values: pgoutput turned an UPDATE into an INSERT (the row
// entered the tenant) and did not send the values. They are read from the
// source now; never written as NULL (docs/hazards.md 3.2). Later changes of the
// row follow in the stream, so the row converges.
func (p *Postgres) refetchInsert(ctx context.Context, c *promoted.Change, img promoted.Row) error {
	if err := p.exec(ctx); err != nil {
		return err
	}
	t := c.Table
	if p.fetch == nil {
		return fmt.Errorf("apply insert to %s %s: pgoutput sent unchanged TOAST values for a row new to the target and no source reader is configured", t, keyText(t, t.PrimaryKey, img))
	}
	row, ok, err := p.fetch.FetchRow(ctx, t, img, p.xid)
	if err != nil {
		return fmt.Errorf("re-read %s %s from the source: %w", t, keyText(t, t.PrimaryKey, img), err)
	}
	p.m.refetches.Inc()
	if !ok {
		// The transaction that sent it is visible, so the row was deleted
		// or moved away since, by a later transaction the stream brings
		// next; that change finds nothing, rightly.
		p.mu.Lock()
		p.gone[t.String()+keyText(t, t.PrimaryKey, img)] = true
		p.mu.Unlock()
		return nil
	}
	cols := present(t, row, writable)
	tag, err := p.execText(ctx, p.sql.upsert(t, cols), params(row, cols))
	if err != nil {
		p.inTx = false
		return fmt.Errorf("apply insert to %s: %w", t, err)
	}
	if guardedUpsert(t) && tag.RowsAffected() != 1 {
		p.inTx = false
		return &ErrDiverged{Op: promoted.Insert, Table: t.String(), Key: keyText(t, t.PrimaryKey, row), Rows: tag.RowsAffected()}
	}
	p.m.changes[promoted.Insert].Inc()
	p.txChanges++
	return nil
}

// one queues a statement for a single change, after its table's pending
// batches, which come before it in the source's order.
func (p *Postgres) one(c *promoted.Change, sql string, params [][]byte, chk check) {
	p.flushTable(c.Table)
	p.queueRaw(sql, params, chk)
}

func keyCols(c *promoted.Change) []int {
	if c.KeyColumns != nil {
		return c.KeyColumns
	}
	return c.Table.PrimaryKey
}

// changedKey reports whether an update carries an old key that differs
// from the new row's key.
func changedKey(t *promoted.Table, c *promoted.Change) bool {
	for _, k := range keyCols(c) {
		if c.Key[k].Kind != c.New[k].Kind || string(c.Key[k].Data) != string(c.New[k].Data) {
			return true
		}
	}
	return false
}

func hasUnchanged(t *promoted.Table, row promoted.Row) bool {
	for i, v := range row {
		if v.Kind == promoted.Unchanged && !t.Columns[i].Generated {
			return true
		}
	}
	return false
}

// present lists the columns of row that carry a value (or NULL) and pass ok.
func present(t *promoted.Table, row promoted.Row, ok func(promoted.Column) bool) []int {
	cols := make([]int, 0, len(row))
	for i, v := range row {
		if v.Kind != promoted.Unchanged && ok(t.Columns[i]) {
			cols = append(cols, i)
		}
	}
	return cols
}

// params are the text parameters for cols; nil is SQL NULL.
func params(row promoted.Row, cols []int) [][]byte {
	out := make([][]byte, len(cols))
	for i, c := range cols {
		if row[c].Kind == promoted.Text {
			out[i] = row[c].Data
			if out[i] == nil {
				out[i] = []byte{}
			}
		}
	}
	return out
}

// execText runs one statement now with untyped text parameters.
func (p *Postgres) execText(ctx context.Context, sql string, params [][]byte) (tag pgconn.CommandTag, err error) {
	err = p.bounded(ctx, func(ctx context.Context) error {
		tag, err = p.conn.PgConn().ExecParams(ctx, sql, params, nil, nil, nil).Close()
		return err
	})
	return tag, err
}
