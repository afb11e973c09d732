package schema

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// Object kinds a pre-load statement creates.
const (
	ObjSchema   = "schema"
	ObjType     = "type"
	ObjSequence = "sequence"
	ObjTable    = "table"
)

// Step is one pre-load statement and the object it creates, if any (Kind
// and the quoted, qualified Name), so the move can record what it made and
// a cancel can drop exactly that, never a table that held other tenants'
// rows before.
type Step struct {
	SQL        string
	Kind, Name string
	// Table, when set, names the table the statement alters: it is
	// skipped when that table was on the target before the move.
	Table string
}

// PreLoad is the DDL that must run on the target before the snapshot is
// copied: the schema, its types and sequences, and the tables with their
// columns, defaults and CHECK constraints, but no keys or indexes, which
// are cheaper to build once after the load. Every statement may run again
// after a crash. Run it with search_path set to SearchPath().
func (p *Plan) PreLoad() []string {
	steps := p.PreLoadSteps()
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = s.SQL
	}
	return out
}

// PreLoadSteps is PreLoad with the object each statement creates.
func (p *Plan) PreLoadSteps() []Step {
	schema := pgx.Identifier{p.cfg.TargetSchema}.Sanitize()
	out := []Step{{SQL: "CREATE SCHEMA IF NOT EXISTS " + schema, Kind: ObjSchema, Name: schema}}
	for _, ty := range p.Types {
		if ty.DDL != "" {
			out = append(out, Step{SQL: ty.DDL, Kind: ObjType, Name: pgx.Identifier{p.cfg.TargetSchema, ty.Name}.Sanitize()})
		}
	}
	for _, s := range p.seqs {
		if s.identity || s.schema != p.cfg.Schema {
			continue
		}
		name := pgx.Identifier{p.cfg.TargetSchema, s.name}.Sanitize()
		out = append(out, Step{SQL: "CREATE SEQUENCE IF NOT EXISTS " + name + " " + s.options(), Kind: ObjSequence, Name: name})
	}
	for _, t := range p.Tables {
		d := p.defs[t]
		parts := append([]string(nil), d.columns...)
		for _, c := range d.checks {
			parts = append(parts, "CONSTRAINT "+pgx.Identifier{c.name}.Sanitize()+" "+c.def)
		}
		name := pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
		out = append(out, Step{SQL: "CREATE TABLE IF NOT EXISTS " + name + " (\n    " + strings.Join(parts, ",\n    ") + "\n)", Kind: ObjTable, Name: name})
	}
	for _, s := range p.seqs {
		if s.identity || !s.owned || s.schema != p.cfg.Schema || s.table == nil {
			continue
		}
		table := pgx.Identifier{s.table.TargetSchema, s.table.TargetName}.Sanitize()
		out = append(out, Step{SQL: fmt.Sprintf("ALTER SEQUENCE %s OWNED BY %s.%s", pgx.Identifier{p.cfg.TargetSchema, s.name}.Sanitize(),
			table, pgx.Identifier{s.column}.Sanitize()), Table: table})
	}
	return out
}

// PostLoad is the DDL that runs after the copy: primary keys, unique and
// exclusion constraints, secondary indexes, and then foreign keys. A key
// to a table that is not moved is kept, unvalidated, when the target is in
// the source database, and left out otherwise (Notes says which).
//
// only, when not nil, limits it to the tables it returns true for: the
// tables the move created. A table that was there before the move (a
// pooled table a demotion copies into) is never altered, indexed or
// granted on: that would take locks other tenants wait behind. With no
// table left, nothing is returned.
func (p *Plan) PostLoad(only func(*promoted.Table) bool) []string {
	var out, fks []string
	kept := 0
	for _, t := range p.Tables {
		if only != nil && !only(t) {
			continue
		}
		kept++
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
	if kept == 0 {
		return nil
	}
	out = append(out, fks...)
	return append(out, p.grants(only)...)
}

// grants give the target's schema, tables and sequences the privileges
// the source's have, so the application's roles can use them after the
// flip (the mover owns what it created). A grantee missing on the target
// is skipped: the DO block checks for it there.
func (p *Plan) grants(only func(*promoted.Table) bool) []string {
	var out []string
	add := func(kind, object string, gs []grant) {
		for _, g := range gs {
			stmt := "GRANT " + g.privileges + " ON " + kind + " " + object + " TO "
			if g.grantee == "PUBLIC" {
				out = append(out, stmt+"PUBLIC")
				continue
			}
			out = append(out, "DO "+promoted.DollarQuote(" BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "+promoted.QuoteLiteral(g.grantee)+") THEN "+
				stmt+pgx.Identifier{g.grantee}.Sanitize()+"; END IF; END "))
		}
	}
	if p.cfg.TargetSchema != p.cfg.Schema || !p.cfg.SameDatabase {
		add("SCHEMA", pgx.Identifier{p.cfg.TargetSchema}.Sanitize(), p.schemaGrants)
	}
	for _, t := range p.Tables {
		if only != nil && !only(t) {
			continue
		}
		add("TABLE", pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize(), p.defs[t].grants)
	}
	for _, s := range p.seqs {
		if s.schema != p.cfg.Schema {
			continue
		}
		add("SEQUENCE", pgx.Identifier{p.cfg.TargetSchema, s.name}.Sanitize(), s.grants)
	}
	return out
}

// foreignKeyNotes says in Notes what the plan does with keys to tables
// that are not moved.
func (p *Plan) foreignKeyNotes() {
	byOID := map[uint32]*promoted.Table{}
	for _, t := range p.Tables {
		byOID[p.defs[t].oid] = t
	}
	p.Children = map[*promoted.Table][]*promoted.Table{}
	for _, t := range p.Tables {
		for _, fk := range p.defs[t].fks {
			if parent := byOID[fk.ref]; fk.internal && parent != nil && parent != t {
				p.Children[parent] = append(p.Children[parent], t)
				if !fk.indexed {
					p.Notes = append(p.Notes, fmt.Sprintf("foreign key %s of %s has no index on (%s): every row `promoted cleanup` deletes from %s scans %s, so cleanup deletes %s's rows first and VACUUMs it before; CREATE INDEX CONCURRENTLY ON %s (%s) makes it fast",
						fk.name, t, fk.columns, parent, t, t, pgx.Identifier{t.Schema, t.Name}.Sanitize(), fk.columns))
				}
			}
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
