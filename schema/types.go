package schema

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// firstUserOID is PostgreSQL's FirstNormalObjectId: objects below it are
// built in and the same in every database.
const firstUserOID = 16384

// Type is a user-defined type the moved columns use, directly or through
// an array, domain or composite, listed after the types it depends on.
type Type struct {
	OID    uint32
	Schema string
	Name   string
	// Kind is pg_type.typtype: 'e' enum, 'd' domain, 'c' composite.
	Kind byte
	// DDL creates the type in the target schema, or is empty for a type
	// that lives outside the moved schema and must already exist.
	DDL string
}

type typeInfo struct {
	name, schema, kind, category string
	elem, base, rel              uint32
	baseType                     string
	notNull                      bool
	def                          *string
	extension                    bool
}

// readTypes walks every moved column's type down to the built-in types,
// records the user-defined ones in dependency order, and marks columns
// whose values binary COPY cannot carry between databases.
func (p *Plan) readTypes(ctx context.Context, tx pgx.Tx) error {
	seen := map[uint32]*typeInfo{}
	for _, t := range p.Tables {
		for i := range t.Columns {
			c := &t.Columns[i]
			unsafe, err := p.walkType(ctx, tx, c.TypeOID, seen, false)
			if err != nil {
				return fmt.Errorf("plan %s column %s: %w", t, c.Name, err)
			}
			c.BinaryUnsafe = unsafe
		}
	}
	return nil
}

// walkType visits a type and what it is built from; it reports whether a
// value of it embeds the OID of a user-defined type in binary COPY (an
// array of one, or a composite), which differs between databases.
func (p *Plan) walkType(ctx context.Context, tx pgx.Tx, oid uint32, seen map[uint32]*typeInfo, inArray bool) (bool, error) {
	if oid < firstUserOID {
		return false, nil
	}
	ti, ok := seen[oid]
	if !ok {
		ti = &typeInfo{}
		err := tx.QueryRow(ctx, `SELECT t.typname, n.nspname, t.typtype::text, t.typcategory::text, t.typelem, t.typbasetype, t.typrelid,
		       format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
		       EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
		  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1`, oid).
			Scan(&ti.name, &ti.schema, &ti.kind, &ti.category, &ti.elem, &ti.base, &ti.rel, &ti.baseType, &ti.notNull, &ti.def, &ti.extension)
		if err != nil {
			return false, fmt.Errorf("type %d: %w", oid, err)
		}
		seen[oid] = ti
	}
	switch {
	case ti.category == "A" && ti.elem != 0:
		// An array's binary form carries its element type's OID.
		_, err := p.walkType(ctx, tx, ti.elem, seen, true)
		return ti.elem >= firstUserOID, err
	case ti.kind == "d":
		unsafe, err := p.walkType(ctx, tx, ti.base, seen, inArray)
		if err != nil {
			return false, err
		}
		return unsafe, p.addType(ctx, tx, oid, ti)
	case ti.kind == "c":
		rows, err := tx.Query(ctx, `SELECT atttypid FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, ti.rel)
		if err != nil {
			return false, err
		}
		attrs, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
		if err != nil {
			return false, err
		}
		for _, a := range attrs {
			if _, err := p.walkType(ctx, tx, a, seen, false); err != nil {
				return false, err
			}
		}
		return true, p.addType(ctx, tx, oid, ti)
	default:
		return false, p.addType(ctx, tx, oid, ti)
	}
}

func (p *Plan) addType(ctx context.Context, tx pgx.Tx, oid uint32, ti *typeInfo) error {
	for _, x := range p.Types {
		if x.OID == oid {
			return nil
		}
	}
	ty := &Type{OID: oid, Schema: ti.schema, Name: ti.name, Kind: ti.kind[0]}
	qualified := pgx.Identifier{ti.schema, ti.name}.Sanitize()
	if ti.schema != p.cfg.Schema || ti.extension {
		if !p.cfg.SameDatabase {
			p.Notes = append(p.Notes, fmt.Sprintf("type %s is not defined in schema %s by the user (it is outside it or belongs to an extension): it must already exist on the target", qualified, p.cfg.Schema))
		}
		p.Types = append(p.Types, ty)
		return nil
	}
	name := pgx.Identifier{p.cfg.TargetSchema, ti.name}.Sanitize()
	var body string
	switch ti.kind {
	case "e":
		rows, err := tx.Query(ctx, `SELECT enumlabel FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder`, oid)
		if err != nil {
			return fmt.Errorf("type %s: %w", qualified, err)
		}
		labels, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("type %s: %w", qualified, err)
		}
		for i, l := range labels {
			labels[i] = promoted.QuoteLiteral(l)
		}
		body = "CREATE TYPE " + name + " AS ENUM (" + strings.Join(labels, ", ") + ")"
	case "d":
		body = "CREATE DOMAIN " + name + " AS " + ti.baseType
		if ti.def != nil {
			body += " DEFAULT " + *ti.def
		}
		if ti.notNull {
			body += " NOT NULL"
		}
		rows, err := tx.Query(ctx, `SELECT conname, pg_get_constraintdef(oid, true) FROM pg_constraint WHERE contypid = $1 AND contype = 'c' ORDER BY conname`, oid)
		if err != nil {
			return fmt.Errorf("type %s: %w", qualified, err)
		}
		var cn, cd string
		if _, err := pgx.ForEachRow(rows, []any{&cn, &cd}, func() error {
			body += " CONSTRAINT " + pgx.Identifier{cn}.Sanitize() + " " + cd
			return nil
		}); err != nil {
			return fmt.Errorf("type %s: %w", qualified, err)
		}
	case "c":
		rows, err := tx.Query(ctx, `SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, ti.rel)
		if err != nil {
			return fmt.Errorf("type %s: %w", qualified, err)
		}
		var an, at string
		var attrs []string
		if _, err := pgx.ForEachRow(rows, []any{&an, &at}, func() error {
			attrs = append(attrs, pgx.Identifier{an}.Sanitize()+" "+at)
			return nil
		}); err != nil {
			return fmt.Errorf("type %s: %w", qualified, err)
		}
		body = "CREATE TYPE " + name + " AS (" + strings.Join(attrs, ", ") + ")"
	default:
		return refuse("type %s (typtype %s) cannot be recreated on the target by promoted yet: create it in schema %s on the target first", qualified, ti.kind, p.cfg.TargetSchema)
	}
	ty.DDL = ignoreExisting(body)
	p.Types = append(p.Types, ty)
	return nil
}

// ignoreExisting wraps DDL that has no IF NOT EXISTS form so that a rerun
// after a crash skips what the last run already made.
func ignoreExisting(stmt string) string {
	return "DO " + promoted.DollarQuote(" BEGIN "+stmt+"; EXCEPTION WHEN duplicate_object OR duplicate_table OR invalid_table_definition THEN NULL; END ")
}
