// Package schema reads the moved tables' definitions from the source
// catalog and turns them into the target's DDL. It is the plan of a move:
// which tables, which columns and keys, how each table's changes are
// filtered, and what must exist on the target before and after the load.
package schema

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// Config says what to plan: the tables of Schema that carry TenantColumn
// (or exactly Tables), moving into TargetSchema.
type Config struct {
	Schema       string
	TargetSchema string
	TenantColumn string
	Tables       []string
	Tenant       promoted.Tenant
	// SameDatabase is true when the target schema lives in the source
	// database, so keys to tables that are not moved can be kept.
	SameDatabase bool
	// Sequences are sequences of Schema the application calls by name
	// (nextval('invoice_no_seq')), moved besides those the tables use.
	Sequences []string
	// TargetTenant is set by a demotion: the tenant column of each target
	// table that has it, by table name. A source table without the tenant
	// column whose target has it is moved whole (a tenant that started
	// dedicated): the column is planned as Virtual, with this type.
	TargetTenant map[string]promoted.Column
}

// Sequence is a sequence a moved column draws its defaults from, on both
// sides, so the cutover can set the target's at or above the source's.
type Sequence struct {
	// Source and Target are schema-qualified, quoted names.
	Source, Target string
	Table          *promoted.Table
	Column         string
	// Shared is true when both names are the same sequence (a sequence
	// outside the moved schema, in the same database): nothing to sync.
	Shared bool
}

// Plan is the result of Load.
type Plan struct {
	Tables    []*promoted.Table
	Types     []*Type
	Sequences []Sequence
	// Notes are decisions the user should know about (a foreign key to a
	// table that is not moved, a type that must already exist), logged
	// as warnings.
	Notes []string
	// Children maps each moved table to the moved tables whose foreign
	// keys reference it: deleting the tenant's rows must empty the
	// children first.
	Children map[*promoted.Table][]*promoted.Table
	// Definitions are the moved tables' column definitions as planned
	// (see Drift).
	Definitions map[string]string
	// ReferencedBy lists foreign keys of tables that are not moved into
	// tables that are: after a promotion their rows would point at rows
	// that cleanup deletes (or, ON DELETE CASCADE, be deleted with them).
	ReferencedBy []string

	cfg          Config
	defs         map[*promoted.Table]*tableDef
	seqs         []*seqDef
	schemaGrants []grant
}

// ErrRefused wraps every refusal of the plan, so the CLI and tests can tell
// bad input from a broken connection.
var ErrRefused = errors.New("refused")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrRefused}, args...)...)
}

// Load reads the plan from the source in one read-only snapshot. It refuses,
// with one line naming the fix, tables it cannot move: no primary key, no
// tenant column, partitioned, or a tenant value the column cannot hold.
func Load(ctx context.Context, conn *pgx.Conn, cfg Config) (*Plan, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	defer tx.Rollback(context.Background())
	p := &Plan{cfg: cfg, defs: map[*promoted.Table]*tableDef{}}
	// First everything whose text must mean the same on any connection:
	// types qualified unless in pg_catalog.
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = pg_catalog"); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	var nsp uint32
	if err := tx.QueryRow(ctx, "SELECT oid FROM pg_namespace WHERE nspname = $1", cfg.Schema).Scan(&nsp); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, refuse("schema %q does not exist on the source: check --schema", cfg.Schema)
		}
		return nil, fmt.Errorf("plan: %w", err)
	}
	rels, err := p.findTables(ctx, tx, nsp)
	if err != nil {
		return nil, err
	}
	for _, r := range rels {
		t, err := p.readTable(ctx, tx, r)
		if err != nil {
			return nil, err
		}
		p.Tables = append(p.Tables, t)
	}
	for _, t := range p.Tables {
		if err := p.readTenant(ctx, tx, t); err != nil {
			return nil, err
		}
	}
	if p.Definitions, err = definitions(ctx, tx, p.Tables); err != nil {
		return nil, err
	}
	// Then the DDL, printed relative to the source schema so that names in
	// it resolve to the target schema on the target.
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = "+pgx.Identifier{cfg.Schema}.Sanitize()+", pg_catalog"); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	for _, t := range p.Tables {
		if err := p.readDefinition(ctx, tx, t); err != nil {
			return nil, err
		}
		if err := p.readTableGrants(ctx, tx, t); err != nil {
			return nil, err
		}
	}
	var nspACL []string
	var nspOwner uint32
	if err := tx.QueryRow(ctx, `SELECT nspacl::text[], nspowner FROM pg_namespace WHERE oid = $1`, nsp).Scan(&nspACL, &nspOwner); err != nil {
		return nil, fmt.Errorf("plan: schema privileges: %w", err)
	}
	if p.schemaGrants, err = readGrants(ctx, tx, nspACL, nspOwner); err != nil {
		return nil, fmt.Errorf("plan: schema privileges: %w", err)
	}
	if err := p.readTypes(ctx, tx); err != nil {
		return nil, err
	}
	if err := p.readSequences(ctx, tx); err != nil {
		return nil, err
	}
	p.foreignKeyNotes()
	if err := p.readReferencedBy(ctx, tx); err != nil {
		return nil, err
	}
	if err := p.checkTenantLiterals(); err != nil {
		return nil, err
	}
	return p, nil
}

// readReferencedBy finds foreign keys from tables that are not moved into
// moved ones.
func (p *Plan) readReferencedBy(ctx context.Context, tx pgx.Tx) error {
	oids := make([]uint32, 0, len(p.Tables))
	for _, t := range p.Tables {
		oids = append(oids, p.defs[t].oid)
	}
	rows, err := tx.Query(ctx, `SELECT format('%s of %s references %s (ON DELETE %s)', c.conname, c.conrelid::regclass, c.confrelid::regclass,
	        CASE c.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END)
	  FROM pg_constraint c
	 WHERE c.contype = 'f' AND c.confrelid = ANY ($1) AND NOT c.conrelid = ANY ($1)
	 ORDER BY 1`, oids)
	if err != nil {
		return fmt.Errorf("plan: foreign keys into the moved tables: %w", err)
	}
	p.ReferencedBy, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("plan: foreign keys into the moved tables: %w", err)
	}
	return nil
}

// checkTenantLiterals refuses tables whose tenant columns print the tenant
// differently (a text column holding '042' next to a bigint one holding
// 42): the move, its fence and its catalog entry need one tenant value.
func (p *Plan) checkTenantLiterals() error {
	for _, t := range p.Tables[1:] {
		if t.TenantLiteral != p.Tables[0].TenantLiteral {
			return refuse("tenant %q is %q in %s but %q in %s, whose tenant columns have different types: move them separately with --tables", string(p.cfg.Tenant), p.Tables[0].TenantLiteral, p.Tables[0], t.TenantLiteral, t)
		}
	}
	return nil
}

// Tenant is the tenant as the source prints the tenant column's type: the
// one value the move, its fence and the catalog know the tenant by.
func (p *Plan) Tenant() string { return p.Tables[0].TenantLiteral }

// TenantType is format_type of the tenant column.
func (p *Plan) TenantType() string { return p.Tables[0].Columns[p.Tables[0].Tenant].Type }

// TableNames are the moved tables' names, in plan order.
func (p *Plan) TableNames() []string {
	out := make([]string, len(p.Tables))
	for i, t := range p.Tables {
		out[i] = t.Name
	}
	return out
}

// whole reports whether a source table without the tenant column is moved
// whole, because its target has the column (Config.TargetTenant).
func (p *Plan) whole(table string) bool {
	_, ok := p.cfg.TargetTenant[table]
	return ok
}

type rel struct {
	oid       uint32
	name      string
	kind      string
	replident string
	hasTenant bool
}

func (p *Plan) findTables(ctx context.Context, tx pgx.Tx, nsp uint32) ([]rel, error) {
	rows, err := tx.Query(ctx, `SELECT c.oid, c.relname, c.relkind::text, c.relreplident::text,
	       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped)
	  FROM pg_class c
	 WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
	 ORDER BY c.relname`, nsp, p.cfg.TenantColumn)
	if err != nil {
		return nil, fmt.Errorf("plan: list tables: %w", err)
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rel, error) {
		var x rel
		err := r.Scan(&x.oid, &x.name, &x.kind, &x.replident, &x.hasTenant)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("plan: list tables: %w", err)
	}
	var out []rel
	if len(p.cfg.Tables) > 0 {
		for _, name := range p.cfg.Tables {
			i := slices.IndexFunc(all, func(r rel) bool { return r.name == name })
			if i < 0 {
				return nil, refuse("table %s.%s does not exist on the source: check --tables and --schema", p.cfg.Schema, name)
			}
			if !all[i].hasTenant && !p.whole(name) {
				return nil, refuse("table %s.%s has no column %s: add the tenant column to it, or leave it out of --tables", p.cfg.Schema, name, p.cfg.TenantColumn)
			}
			out = append(out, all[i])
		}
	} else {
		for _, r := range all {
			if r.hasTenant || p.whole(r.name) {
				out = append(out, r)
			}
		}
		if len(out) == 0 {
			return nil, refuse("no table of schema %s has a column %s: check --schema and --tenant-column", p.cfg.Schema, p.cfg.TenantColumn)
		}
	}
	for _, r := range out {
		if r.kind == "p" {
			return nil, refuse("table %s.%s is partitioned, which promoted cannot move yet: leave it out with --tables", p.cfg.Schema, r.name)
		}
	}
	return out, nil
}

func (p *Plan) readTable(ctx context.Context, tx pgx.Tx, r rel) (*promoted.Table, error) {
	t := &promoted.Table{Schema: p.cfg.Schema, Name: r.name, TargetSchema: p.cfg.TargetSchema, TargetName: r.name,
		ReplicaIdentity: r.replident[0]}
	d := &tableDef{oid: r.oid}
	p.defs[t] = d
	rows, err := tx.Query(ctx, `SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid,
	       a.attnotnull, a.attgenerated::text, a.attidentity::text
	  FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, r.oid)
	if err != nil {
		return nil, fmt.Errorf("plan %s: columns: %w", t, err)
	}
	var gen, ident string
	var num int16
	var c promoted.Column
	_, err = pgx.ForEachRow(rows, []any{&num, &c.Name, &c.Type, &c.TypeOID, &c.NotNull, &gen, &ident}, func() error {
		col := c
		col.Generated = gen != ""
		if ident != "" {
			col.Identity = ident[0]
		}
		t.Columns = append(t.Columns, col)
		d.attnums = append(d.attnums, num)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("plan %s: columns: %w", t, err)
	}
	t.Tenant = t.ColumnIndex(p.cfg.TenantColumn)
	if t.Tenant < 0 {
		// Moved whole (findTables checked there is a target column).
		col := p.cfg.TargetTenant[r.name]
		if col.TypeOID >= firstUserOID {
			return nil, refuse("%s has no column %s, and the target's is of type %s, which is not built in: add the column to %s, or give the target's tenant column a built-in type", t, p.cfg.TenantColumn, col.Type, t)
		}
		col.Virtual, col.Generated, col.Identity, col.Missing = true, false, 0, ""
		t.Columns = append(t.Columns, col)
		t.Tenant = len(t.Columns) - 1
	}
	if t.Columns[t.Tenant].Generated {
		return nil, refuse("the tenant column of %s is generated, so its changes cannot be told apart by tenant: move the table by a stored tenant column", t)
	}
	pk, err := p.indexColumns(ctx, tx, t, "indisprimary")
	if err != nil {
		return nil, err
	}
	if pk == nil {
		return nil, refuse("table %s has no primary key, which promoted needs to apply updates and deletes: add one (ALTER TABLE %s ADD PRIMARY KEY (...))", t, pgx.Identifier{t.Schema, t.Name}.Sanitize())
	}
	t.PrimaryKey = pk
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1 AND indisunique AND NOT indisprimary)
	    OR EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1 AND contype = 'x')`, r.oid).Scan(&t.OtherUnique); err != nil {
		return nil, fmt.Errorf("plan %s: unique indexes: %w", t, err)
	}
	// A publication that publishes updates and deletes makes every UPDATE
	// and DELETE of a table without a usable replica identity fail, for
	// every tenant (docs/hazards.md 4.2).
	name := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	switch t.ReplicaIdentity {
	case 'n':
		return nil, refuse("table %s has REPLICA IDENTITY NOTHING: once it is published, every tenant's UPDATE and DELETE on it would fail; run ALTER TABLE %s REPLICA IDENTITY DEFAULT first", t, name)
	case 'i':
		ri, err := p.indexColumns(ctx, tx, t, "indisreplident")
		if err != nil {
			return nil, err
		}
		if ri == nil {
			return nil, refuse("table %s has REPLICA IDENTITY USING INDEX, but that index was dropped, which behaves as NOTHING: once it is published, every tenant's UPDATE and DELETE on it would fail; run ALTER TABLE %s REPLICA IDENTITY DEFAULT first", t, name)
		}
	}
	switch {
	case t.Whole():
		// Every row and change is the tenant's: the publication needs no
		// filter, and one the stream finds that is not is an error.
		t.ServerFilter = true
	case t.Columns[t.Tenant].TypeOID >= firstUserOID:
		// Row filters accept built-in types only.
	case t.ReplicaIdentity == 'f':
		t.ServerFilter = true
	case t.ReplicaIdentity == 'd':
		t.ServerFilter = slices.Contains(pk, t.Tenant)
	case t.ReplicaIdentity == 'i':
		ri, err := p.indexColumns(ctx, tx, t, "indisreplident")
		if err != nil {
			return nil, err
		}
		t.ServerFilter = slices.Contains(ri, t.Tenant)
	}
	return t, nil
}

// indexColumns returns the column positions of the table's index marked by
// flag (indisprimary or indisreplident), or nil.
func (p *Plan) indexColumns(ctx context.Context, tx pgx.Tx, t *promoted.Table, flag string) ([]int, error) {
	var keys []int16
	err := tx.QueryRow(ctx, "SELECT indkey::int2[] FROM pg_index WHERE indrelid = $1 AND "+flag, p.defs[t].oid).Scan(&keys)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("plan %s: index: %w", t, err)
	}
	out := make([]int, 0, len(keys))
	for _, k := range keys {
		i := slices.Index(p.defs[t].attnums, k)
		if i < 0 {
			return nil, refuse("table %s has an expression in its %s, which promoted cannot use as a key: key the table by plain columns", t, flag[5:])
		}
		out = append(out, i)
	}
	return out, nil
}

// readTenant checks that the tenant value casts to the tenant column's
// type, records it as the source prints it, and estimates the tenant's
// share of the table from the planner's statistics.
func (p *Plan) readTenant(ctx context.Context, tx pgx.Tx, t *promoted.Table) error {
	col := t.Columns[t.Tenant]
	if _, err := tx.Exec(ctx, "SAVEPOINT tenant_cast"); err != nil {
		return fmt.Errorf("plan %s: %w", t, err)
	}
	if err := tx.QueryRow(ctx, "SELECT ($1::text)::"+col.Type+"::text", string(p.cfg.Tenant)).Scan(&t.TenantLiteral); err != nil {
		return refuse("tenant %q is not a valid %s (the type of %s.%s): pass the tenant as it is stored", string(p.cfg.Tenant), col.Type, t, col.Name)
	}
	if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT tenant_cast"); err != nil {
		return fmt.Errorf("plan %s: %w", t, err)
	}
	// EXPLAIN needs SELECT: without this check a missing grant surfaces as
	// a bare "permission denied" instead of the refusal naming the fix.
	var canSelect bool
	if err := tx.QueryRow(ctx, "SELECT has_table_privilege($1::oid, 'SELECT')", p.defs[t].oid).Scan(&canSelect); err != nil {
		return fmt.Errorf("plan %s: %w", t, err)
	}
	if !canSelect {
		return refuse("the source role lacks SELECT on %s: GRANT SELECT ON %s TO the role", t, pgx.Identifier{t.Schema, t.Name}.Sanitize())
	}
	var out []byte
	if err := tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) SELECT * FROM "+t.SourceRelation()+" WHERE "+t.TenantPredicate()).Scan(&out); err != nil {
		return fmt.Errorf("plan %s: estimate: %w", t, err)
	}
	var plans []struct {
		Plan struct {
			Rows  float64 `json:"Plan Rows"`
			Width float64 `json:"Plan Width"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal(out, &plans); err != nil || len(plans) == 0 {
		return fmt.Errorf("plan %s: estimate: unexpected EXPLAIN output", t)
	}
	t.EstimatedRows = int64(plans[0].Plan.Rows)
	t.EstimatedBytes = int64(plans[0].Plan.Rows * plans[0].Plan.Width)
	return nil
}

// SearchPath is the search_path the target DDL runs under: the names the
// plan prints unqualified are the moved schema's, and resolve to the
// target schema.
func (p *Plan) SearchPath() string {
	return pgx.Identifier{p.cfg.TargetSchema}.Sanitize() + ", pg_catalog"
}
