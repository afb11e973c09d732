package schema

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
)

// definitionSQL describes a table's columns as the move depends on them:
// names, types with their typmod, NOT NULL, collation and generation, in
// column order. It runs with search_path = pg_catalog, so every user type
// and collation is schema-qualified and the text means the same wherever
// it is read.
const definitionSQL = `SELECT coalesce(string_agg(format('%I %s%s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
        CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
        CASE WHEN a.attcollation <> 0 THEN ' COLLATE ' || a.attcollation::regcollation::text ELSE '' END,
        CASE WHEN a.attgenerated <> '' THEN ' GENERATED' ELSE '' END), ', ' ORDER BY a.attnum), '')
  FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`

// Definitions reads the current definition of each table's columns on the
// source, keyed by table.
func Definitions(ctx context.Context, conn *pgx.Conn, tables []*promoted.Table) (map[string]string, error) {
	return DefinitionsAt(ctx, conn, tables, "")
}

// DefinitionsAt reads the definitions as the exported snapshot sees them:
// what the copy under that snapshot will read ("": as of now).
func DefinitionsAt(ctx context.Context, conn *pgx.Conn, tables []*promoted.Table, snapshot string) (map[string]string, error) {
	tx, err := db.BeginAt(ctx, conn, snapshot)
	if err != nil {
		return nil, fmt.Errorf("read table definitions: %w", err)
	}
	defer tx.Rollback(context.Background())
	return definitions(ctx, tx, tables)
}

func definitions(ctx context.Context, tx pgx.Tx, tables []*promoted.Table) (map[string]string, error) {
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = pg_catalog"); err != nil {
		return nil, fmt.Errorf("read table definitions: %w", err)
	}
	out := map[string]string{}
	for _, t := range tables {
		var def string
		if err := tx.QueryRow(ctx, definitionSQL, pgx.Identifier{t.Schema, t.Name}.Sanitize()).Scan(&def); err != nil {
			return nil, fmt.Errorf("read the definition of %s: %w", t, err)
		}
		out[t.String()] = def
	}
	return out, nil
}

// DriftFrom compares definitions read now with the plan's.
func (p *Plan) DriftFrom(now map[string]string) error {
	for _, t := range p.Tables {
		if was := p.Definitions[t.String()]; now[t.String()] != was {
			return fmt.Errorf("table %s changed on the source during the move (%s): schema changes are not supported yet; cancel the move, then run it again to copy the tenant with the new definition", t, columnChange(was, now[t.String()]))
		}
	}
	return nil
}

// ChangedColumns compares definitions read now with the plan's as a
// replica does, which follows columns added and dropped (its stream
// carries them to the target) but nothing else: a column present in both
// whose type, typmod, NOT NULL, collation or generation differs stops it.
func (p *Plan) ChangedColumns(now map[string]string) error {
	for _, t := range p.Tables {
		was, _ := splitDefinition(p.Definitions[t.String()])
		_, nowCols := splitDefinition(now[t.String()])
		for _, c := range was {
			name, _, _ := strings.Cut(c, " ")
			if n, ok := nowCols[name]; ok && n != c {
				return fmt.Errorf("table %s changed on the source while the replica was stopped (column %s is now %s): a replica follows columns added and dropped, nothing else; cancel it, then run it again to copy the tenant with the new definition", t, c, strings.TrimPrefix(n, name+" "))
			}
		}
	}
	return nil
}

// splitDefinition splits a definition from definitionSQL into its
// columns, in order and by name.
func splitDefinition(def string) (cols []string, byName map[string]string) {
	byName = map[string]string{}
	if def == "" {
		return nil, byName
	}
	for _, c := range strings.Split(def, ", ") {
		name, _, _ := strings.Cut(c, " ")
		cols = append(cols, c)
		byName[name] = c
	}
	return cols, byName
}

// columnChange names the first column whose definition differs.
func columnChange(was, now string) string {
	split := func(def string) (names []string, byName map[string]string) {
		byName = map[string]string{}
		for _, c := range strings.Split(def, ", ") {
			name, _, _ := strings.Cut(c, " ")
			names = append(names, name)
			byName[name] = c
		}
		return names, byName
	}
	wasNames, wasCols := split(was)
	nowNames, nowCols := split(now)
	for _, n := range wasNames {
		switch c, ok := nowCols[n]; {
		case !ok:
			return "column " + n + " was dropped"
		case c != wasCols[n]:
			return "column " + wasCols[n] + " is now " + strings.TrimPrefix(c, n+" ")
		}
	}
	for _, n := range nowNames {
		if _, ok := wasCols[n]; !ok {
			return "column " + nowCols[n] + " was added"
		}
	}
	return "column order changed"
}

// Drift compares the source's current definitions and publication with
// the plan's: a column's type, typmod, NOT NULL, collation or generation
// changed, a column added or dropped, or a table no longer published
// (or one added). It returns one line naming the first difference, or
// nil.
func (p *Plan) Drift(ctx context.Context, conn *pgx.Conn, publication string) error {
	now, err := Definitions(ctx, conn, p.Tables)
	if err != nil {
		return err
	}
	if err := p.DriftFrom(now); err != nil {
		return err
	}
	rows, err := conn.Query(ctx, `SELECT format('%s.%s', schemaname, tablename) FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, publication)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read publication %s: %w", publication, err)
	}
	want := make([]string, len(p.Tables))
	for i, t := range p.Tables {
		want[i] = t.String()
	}
	slices.Sort(want)
	if !slices.Equal(published, want) {
		return fmt.Errorf("publication %s was altered during the move (it publishes %s, the move needs %s), so changes may have been missed: cancel the move and run it again",
			publication, strings.Join(published, ", "), strings.Join(want, ", "))
	}
	return nil
}
