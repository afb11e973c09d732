package kafka

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// ColumnType is what Debezium's type mapping needs to know about a column
// beyond promoted.Column: the type behind any domain, its type modifier
// (precision, scale, length), an array's element type and an enum's
// labels. It is read from the source catalog once, by LoadTypes.
type ColumnType struct {
	// OID is the column's declared type (possibly a domain).
	OID uint32
	// Base is the type behind any domains; Name, Kind and Category are
	// its pg_type.typname, typtype and typcategory.
	Base     uint32
	Name     string
	Kind     byte
	Category byte
	// Typmod is the column's atttypmod, or the innermost domain's
	// typtypmod when the column has none (-1: no modifier).
	Typmod int32
	// Elem is an array's element type, domains resolved; nil otherwise.
	Elem *ColumnType
	// Enum lists an enum's labels in the order Debezium's catalog query
	// returns them (it aggregates pg_enum without ORDER BY).
	Enum []string
}

// Types is the catalog information the Kafka encoder needs for the moved
// tables, and the source database's name (Debezium's source.db).
type Types struct {
	Database string
	// mu guards cols: a column added on the source is read by the
	// stream's goroutine while the sink's encodes.
	mu   sync.RWMutex
	cols map[string]map[string]*ColumnType
}

// Column returns the type information of one column of t, or nil.
func (ts *Types) Column(t *promoted.Table, name string) *ColumnType {
	if ts == nil {
		return nil
	}
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	return ts.cols[t.String()][name]
}

// AddColumn reads the type of a column added to t on the source while a
// replica runs, so that the records from its next change on carry it.
func (ts *Types) AddColumn(ctx context.Context, conn *pgx.Conn, t *promoted.Table, name string, oid uint32, typmod int32) error {
	l := &typeLoader{conn: conn, cache: map[uint32]*pgType{}}
	ct, err := l.resolve(ctx, oid, typmod)
	if err != nil {
		return fmt.Errorf("read the type of %s.%s: %w", t, name, err)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.cols[t.String()] == nil {
		ts.cols[t.String()] = map[string]*ColumnType{}
	}
	ts.cols[t.String()][name] = ct
	return nil
}

// LoadTypes reads what the encoder needs from the source catalog: each
// column's type with domains resolved, its modifier, array element types
// and enum labels. It only reads pg_catalog, so any role that can connect
// can run it.
func LoadTypes(ctx context.Context, conn *pgx.Conn, tables []*promoted.Table) (*Types, error) {
	ts := &Types{cols: map[string]map[string]*ColumnType{}}
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&ts.Database); err != nil {
		return nil, fmt.Errorf("read the source database name: %w", err)
	}
	l := &typeLoader{conn: conn, cache: map[uint32]*pgType{}}
	for _, t := range tables {
		rows, err := conn.Query(ctx, `SELECT a.attname, a.atttypid, a.atttypmod
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped`, t.Schema, t.Name)
		if err != nil {
			return nil, fmt.Errorf("read the column types of %s: %w", t, err)
		}
		type att struct {
			name   string
			oid    uint32
			typmod int32
		}
		var atts []att
		for rows.Next() {
			var a att
			if err := rows.Scan(&a.name, &a.oid, &a.typmod); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read the column types of %s: %w", t, err)
			}
			atts = append(atts, a)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read the column types of %s: %w", t, err)
		}
		cols := map[string]*ColumnType{}
		for _, a := range atts {
			ct, err := l.resolve(ctx, a.oid, a.typmod)
			if err != nil {
				return nil, fmt.Errorf("read the type of %s.%s: %w", t, a.name, err)
			}
			cols[a.name] = ct
		}
		for _, c := range t.Columns {
			if cols[c.Name] == nil {
				return nil, fmt.Errorf("column %s of %s is not in the source catalog: the table changed since the move was planned", c.Name, t)
			}
		}
		ts.cols[t.String()] = cols
	}
	return ts, nil
}

type pgType struct {
	name     string
	kind     byte
	category byte
	elem     uint32
	base     uint32
	typmod   int32
	enum     []string
}

type typeLoader struct {
	conn  *pgx.Conn
	cache map[uint32]*pgType
	enums map[uint32][]string
}

func (l *typeLoader) get(ctx context.Context, oid uint32) (*pgType, error) {
	if t, ok := l.cache[oid]; ok {
		return t, nil
	}
	var (
		t              pgType
		kind, category string
	)
	if err := l.conn.QueryRow(ctx, `SELECT typname, typtype::text, typcategory::text, typelem, typbasetype, typtypmod
FROM pg_catalog.pg_type WHERE oid = $1`, oid).Scan(&t.name, &kind, &category, &t.elem, &t.base, &t.typmod); err != nil {
		return nil, fmt.Errorf("type %d: %w", oid, err)
	}
	t.kind, t.category = kind[0], category[0]
	if t.kind == 'e' {
		if l.enums == nil {
			if err := l.loadEnums(ctx); err != nil {
				return nil, err
			}
		}
		t.enum = l.enums[oid]
	}
	l.cache[oid] = &t
	return &t, nil
}

// loadEnums runs Debezium's own enum query (TypeRegistry.SQL_ENUM_VALUES),
// so the labels come in the order Debezium lists them in the schema's
// "allowed" parameter.
func (l *typeLoader) loadEnums(ctx context.Context) error {
	l.enums = map[uint32][]string{}
	rows, err := l.conn.Query(ctx, `SELECT t.enumtypid as id, array_agg(t.enumlabel) as values FROM pg_catalog.pg_enum t GROUP BY id`)
	if err != nil {
		return fmt.Errorf("read enum labels: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id     uint32
			labels []string
		)
		if err := rows.Scan(&id, &labels); err != nil {
			return fmt.Errorf("read enum labels: %w", err)
		}
		l.enums[id] = labels
	}
	return rows.Err()
}

// resolve follows domains to the base type (the innermost domain's
// typmod applies when the column has none) and resolves arrays' element
// types the same way.
func (l *typeLoader) resolve(ctx context.Context, oid uint32, typmod int32) (*ColumnType, error) {
	ct := &ColumnType{OID: oid, Typmod: typmod}
	cur := oid
	for depth := 0; ; depth++ {
		t, err := l.get(ctx, cur)
		if err != nil {
			return nil, err
		}
		if t.kind != 'd' || depth > 32 {
			ct.Base, ct.Name, ct.Kind, ct.Category, ct.Enum = cur, t.name, t.kind, t.category, t.enum
			if t.category == 'A' && t.elem != 0 {
				elem, err := l.resolve(ctx, t.elem, ct.Typmod)
				if err != nil {
					return nil, err
				}
				ct.Elem = elem
			}
			return ct, nil
		}
		if ct.Typmod < 0 {
			ct.Typmod = t.typmod
		}
		cur = t.base
	}
}
