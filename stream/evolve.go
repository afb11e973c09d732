package stream

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/promoted/promoted"
)

// ColumnResolver reads from the source's catalog what a Relation message
// does not say about a column added on the source: its type as SQL text,
// and the value the rows that existed before the ADD COLUMN hold. A
// replica stream is given one (Config.Evolve) so that it follows ADD
// COLUMN and DROP COLUMN instead of stopping.
type ColumnResolver func(ctx context.Context, t *promoted.Table, name string, typeOID uint32, typmod int32) (promoted.Column, error)

// relationChange compares a Relation message with the table's current
// definition. When columns were added or dropped and the stream follows
// such changes, it returns the table's new definition (a new Table value:
// the old one may still be in use by the sink for earlier changes);
// otherwise the current one. A changed type, a column no longer
// generated, or a dropped key or tenant column stops the stream: the
// changes after them could not be applied faithfully.
func (s *Stream) relationChange(ctx context.Context, m *pglogrepl.RelationMessage, t *promoted.Table) (*promoted.Table, bool, error) {
	var (
		added   []*pglogrepl.RelationMessageColumn
		dropped []string
		inMsg   = make(map[string]bool, len(m.Columns))
	)
	for _, c := range m.Columns {
		inMsg[c.Name] = true
		idx := t.ColumnIndex(c.Name)
		if idx < 0 {
			added = append(added, c)
			continue
		}
		col := t.Columns[idx]
		if col.Generated {
			return nil, false, &ErrSchemaChanged{Table: t.String(), Detail: fmt.Sprintf("column %q is no longer generated", c.Name)}
		}
		if col.TypeOID != 0 && c.DataType != col.TypeOID {
			return nil, false, &ErrSchemaChanged{Table: t.String(), Detail: fmt.Sprintf("column %q changed type", c.Name)}
		}
	}
	for _, c := range t.Columns {
		if !c.Generated && !c.Virtual && !inMsg[c.Name] {
			dropped = append(dropped, c.Name)
		}
	}
	if len(added) == 0 && len(dropped) == 0 {
		return t, false, nil
	}
	if s.cfg.Evolve == nil {
		if len(added) > 0 {
			return nil, false, &ErrSchemaChanged{Table: t.String(), Detail: fmt.Sprintf("column %q was added", added[0].Name)}
		}
		return nil, false, &ErrSchemaChanged{Table: t.String(), Detail: fmt.Sprintf("column %s was dropped", strings.Join(dropped, ", "))}
	}
	next := *t
	next.Columns = make([]promoted.Column, 0, len(m.Columns))
	for _, c := range m.Columns {
		if idx := t.ColumnIndex(c.Name); idx >= 0 {
			next.Columns = append(next.Columns, t.Columns[idx])
			continue
		}
		col, err := s.cfg.Evolve(ctx, t, c.Name, c.DataType, c.TypeModifier)
		if err != nil {
			return nil, false, fmt.Errorf("column %s added to %s: %w", c.Name, t, err)
		}
		next.Columns = append(next.Columns, col)
	}
	for _, c := range t.Columns {
		if c.Generated || c.Virtual {
			next.Columns = append(next.Columns, c)
		}
	}
	remap := func(i int, what string) (int, error) {
		name := t.Columns[i].Name
		if j := next.ColumnIndex(name); j >= 0 {
			return j, nil
		}
		return 0, &ErrSchemaChanged{Table: t.String(), Detail: fmt.Sprintf("%s column %q was dropped", what, name)}
	}
	var err error
	if next.Tenant, err = remap(t.Tenant, "the tenant"); err != nil {
		return nil, false, err
	}
	next.PrimaryKey = make([]int, len(t.PrimaryKey))
	for i, k := range t.PrimaryKey {
		if next.PrimaryKey[i], err = remap(k, "primary key"); err != nil {
			return nil, false, err
		}
	}
	names := make([]string, len(added))
	for i, c := range added {
		names[i] = c.Name
	}
	s.log.Info("table changed on the source; following it", "table", t.String(), "added", names, "dropped", dropped)
	return &next, true, nil
}
