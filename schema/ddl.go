package schema

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// PreLoad is the DDL that must run on the target before the snapshot is
// copied: the schema, its types and sequences, and the tables with their
// columns, defaults and CHECK constraints, but no keys or indexes, which
// are cheaper to build once after the load. Every statement may run again
// after a crash. Run it with search_path set to SearchPath().
func (p *Plan) PreLoad() []string {
	out := []string{"CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{p.cfg.TargetSchema}.Sanitize()}
	for _, ty := range p.Types {
		if ty.DDL != "" {
			out = append(out, ty.DDL)
		}
	}
	for _, s := range p.seqs {
		if s.identity || s.schema != p.cfg.Schema {
			continue
		}
		out = append(out, "CREATE SEQUENCE IF NOT EXISTS "+pgx.Identifier{p.cfg.TargetSchema, s.name}.Sanitize()+" "+s.options())
	}
	for _, t := range p.Tables {
		d := p.defs[t]
		parts := append([]string(nil), d.columns...)
		for _, c := range d.checks {
			parts = append(parts, "CONSTRAINT "+pgx.Identifier{c.name}.Sanitize()+" "+c.def)
		}
		out = append(out, "CREATE TABLE IF NOT EXISTS "+pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()+" (\n    "+strings.Join(parts, ",\n    ")+"\n)")
	}
	for _, s := range p.seqs {
		if s.identity || !s.owned || s.schema != p.cfg.Schema {
			continue
		}
		out = append(out, fmt.Sprintf("ALTER SEQUENCE %s OWNED BY %s.%s", pgx.Identifier{p.cfg.TargetSchema, s.name}.Sanitize(),
			pgx.Identifier{s.table.TargetSchema, s.table.TargetName}.Sanitize(), pgx.Identifier{s.column}.Sanitize()))
	}
	return out
}

// PostLoad is the DDL that runs after the copy: primary keys, unique and
// exclusion constraints, secondary indexes, and then foreign keys. A key
// to a table that is not moved is kept, unvalidated, when the target is in
// the source database, and left out otherwise (Notes says which).
func (p *Plan) PostLoad() []string {
	var out, fks []string
	for _, t := range p.Tables {
		d := p.defs[t]
		name := pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
		for _, c := range d.keys {
			out = append(out, ignoreExisting("ALTER TABLE "+name+" ADD CONSTRAINT "+pgx.Identifier{c.name}.Sanitize()+" "+c.def))
		}
		for _, ix := range d.indexes {
			out = append(out, strings.Replace(ix, " INDEX ", " INDEX IF NOT EXISTS ", 1))
		}
		for _, fk := range d.fks {
			switch {
			case fk.internal:
				fks = append(fks, ignoreExisting("ALTER TABLE "+name+" ADD CONSTRAINT "+pgx.Identifier{fk.name}.Sanitize()+" "+fk.def))
			case p.cfg.SameDatabase:
				// The referenced rows are the source's own; NOT VALID
				// skips a scan under a lock on that shared table.
				fks = append(fks, ignoreExisting("ALTER TABLE "+name+" ADD CONSTRAINT "+pgx.Identifier{fk.name}.Sanitize()+" "+fk.qualified+" NOT VALID"))
			}
		}
	}
	return append(out, fks...)
}

// foreignKeyNotes says in Notes what the plan does with keys to tables
// that are not moved.
func (p *Plan) foreignKeyNotes() {
	for _, t := range p.Tables {
		for _, fk := range p.defs[t].fks {
			if fk.internal {
				continue
			}
			if p.cfg.SameDatabase {
				p.Notes = append(p.Notes, fmt.Sprintf("foreign key %s of %s references %s, which is not moved: the target table keeps it, pointing at the same table, added NOT VALID", fk.name, t, fk.references))
			} else {
				p.Notes = append(p.Notes, fmt.Sprintf("foreign key %s of %s references %s, which is not moved and is not in the target database: the target table is created without it", fk.name, t, fk.references))
			}
		}
	}
}
