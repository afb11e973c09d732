package apply

import (
	"context"
	"fmt"

	"github.com/promoted/promoted"
)

// relation follows a column added to or dropped from a table on the
// source: the target table gets the same change, in the open target
// transaction and so atomically with the changes around it, before the
// changes that use the new definition. It compares the new definition
// with the target's catalog rather than with the previous definition, so
// that a resumed stream, which starts from what the target holds, never
// adds or drops a column twice.
func (p *Postgres) relation(ctx context.Context, c *promoted.Change) error {
	t := c.Table
	if !p.Evolve {
		return fmt.Errorf("apply: table %s changed on the source, and this move does not follow schema changes", t)
	}
	// Everything before the change is sent first: the target transaction
	// is then open, and its catalog as this transaction sees it is read.
	if err := p.exec(ctx); err != nil {
		return err
	}
	rows, err := p.conn.Query(ctx, `SELECT attname, atttypid FROM pg_catalog.pg_attribute
WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, qualified(t))
	if err != nil {
		p.inTx = false
		return fmt.Errorf("read the columns of %s on the target: %w", qualified(t), err)
	}
	type att struct {
		name string
		oid  uint32
	}
	var have []att
	for rows.Next() {
		var a att
		if err := rows.Scan(&a.name, &a.oid); err != nil {
			rows.Close()
			p.inTx = false
			return fmt.Errorf("read the columns of %s on the target: %w", qualified(t), err)
		}
		have = append(have, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		p.inTx = false
		return fmt.Errorf("read the columns of %s on the target: %w", qualified(t), err)
	}
	var ddl []string
	for _, col := range t.Columns {
		found := false
		for _, a := range have {
			if a.name != col.Name {
				continue
			}
			found = true
			if col.TypeOID != 0 && col.TypeOID < promoted.FirstUserOID && a.oid != col.TypeOID {
				p.inTx = false
				return fmt.Errorf("apply: column %s of %s has another type on the target than on the source: the target has diverged; cancel the replica and start it again", col.Name, qualified(t))
			}
		}
		if found || col.Generated {
			continue
		}
		add := "ALTER TABLE " + qualified(t) + " ADD COLUMN " + promoted.QuoteIdent(col.Name) + " " + col.Type
		if col.Missing == "" {
			ddl = append(ddl, add)
			continue
		}
		// The rows that existed before the ADD COLUMN hold its default on
		// the source without any change saying so; the target's rows get
		// it the same way, and the default goes again (later rows arrive
		// with every value).
		ddl = append(ddl, add+" DEFAULT "+col.Missing,
			"ALTER TABLE "+qualified(t)+" ALTER COLUMN "+promoted.QuoteIdent(col.Name)+" DROP DEFAULT")
	}
	for _, a := range have {
		if t.ColumnIndex(a.name) < 0 {
			ddl = append(ddl, "ALTER TABLE "+qualified(t)+" DROP COLUMN "+promoted.QuoteIdent(a.name))
		}
	}
	for _, sql := range ddl {
		if _, err := p.execText(ctx, sql, nil); err != nil {
			p.inTx = false
			return fmt.Errorf("apply the source's schema change to the target: %s: %w", sql, err)
		}
	}
	if len(ddl) > 0 {
		p.log.Info("target table changed like the source's", "table", qualified(t), "statements", len(ddl))
	}
	return nil
}
