package job

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/schema"
)

// checkPooled refuses, before anything is created on either side, a
// demotion the pooled tables cannot take: a missing table or column, a
// type that differs, a column the dedicated side cannot fill, rows of the
// tenant already there (unless this demotion is being resumed), a key
// another tenant already holds, or a row a foreign key points to that the
// pooled database lacks. Each refusal is one line naming the fix.
func checkPooled(ctx context.Context, src, dst *pgx.Conn, plan *schema.Plan, resumed bool) error {
	var first error
	checkPooledEach(ctx, src, dst, plan, resumed, func(err error) bool {
		first = err
		return false
	})
	return first
}

// checkPooledEach runs checkPooled's checks and hands each refusal to
// report, stopping when it returns false; a dry run lists them all. The
// checks of a table's rows run only once its pooled table is usable.
func checkPooledEach(ctx context.Context, src, dst *pgx.Conn, plan *schema.Plan, resumed bool, report func(error) bool) {
	targets := map[string]bool{}
	for _, t := range plan.Tables {
		targets[pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()] = true
	}
	var usable []*promoted.Table
	for _, t := range plan.Tables {
		if err := checkPooledTable(ctx, dst, t, resumed); err != nil {
			if !report(err) {
				return
			}
			continue
		}
		usable = append(usable, t)
	}
	for _, t := range usable {
		if err := checkCollisions(ctx, src, dst, t); err != nil && !report(err) {
			return
		}
		if err := checkParents(ctx, src, dst, t, targets); err != nil && !report(err) {
			return
		}
	}
}

// tenantColumns reads the tenant column of each pooled table of schema
// that has one, by table name, with its type as the plan prints types: a
// dedicated table without the column is demoted whole, and gets it with
// this type (schema.Config.TargetTenant).
func tenantColumns(ctx context.Context, dst *pgx.Conn, schema, column string) (map[string]promoted.Column, error) {
	tx, err := dst.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("read the pooled tenant columns: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = pg_catalog"); err != nil {
		return nil, fmt.Errorf("read the pooled tenant columns: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT c.relname::text, format_type(a.atttypid, a.atttypmod), a.atttypid::int8, a.attnotnull
	   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped
	  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')`, schema, column)
	if err != nil {
		return nil, fmt.Errorf("read the pooled tenant columns: %w", err)
	}
	out := map[string]promoted.Column{}
	var (
		table string
		oid   int64
		c     = promoted.Column{Name: column}
	)
	if _, err := pgx.ForEachRow(rows, []any{&table, &c.Type, &oid, &c.NotNull}, func() error {
		c.TypeOID = uint32(oid)
		out[table] = c
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the pooled tenant columns: %w", err)
	}
	return out, nil
}

// pooledColumn is a column of a pooled table, as the checks need it.
type pooledColumn struct {
	name, typ               string
	notNull, fills, userTyp bool
}

func checkPooledTable(ctx context.Context, dst *pgx.Conn, t *promoted.Table, resumed bool) error {
	name := pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
	var exists, may bool
	if err := dst.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL, coalesce(has_table_privilege(to_regclass($1), 'SELECT, INSERT, UPDATE, DELETE'), false)`, name).Scan(&exists, &may); err != nil {
		return fmt.Errorf("check pooled table %s: %w", name, err)
	}
	if !exists {
		return fmt.Errorf("pooled table %s does not exist on the target: a demotion copies into the pooled tables other tenants use; create it with %s's columns (or pass --target-schema)", name, t)
	}
	if !may {
		return fmt.Errorf("the target role may not read and write pooled table %s: GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO the role", name, name)
	}
	// Types as the plan prints them: qualified unless in pg_catalog.
	tx, err := dst.Begin(ctx)
	if err != nil {
		return fmt.Errorf("check pooled table %s: %w", name, err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = pg_catalog"); err != nil {
		return fmt.Errorf("check pooled table %s: %w", name, err)
	}
	rows, err := tx.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
	        a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', a.atttypid >= 16384
	   FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, name)
	if err != nil {
		return fmt.Errorf("check pooled table %s: %w", name, err)
	}
	var cols []pooledColumn
	var c pooledColumn
	if _, err := pgx.ForEachRow(rows, []any{&c.name, &c.typ, &c.notNull, &c.fills, &c.userTyp}, func() error {
		cols = append(cols, c)
		return nil
	}); err != nil {
		return fmt.Errorf("check pooled table %s: %w", name, err)
	}
	for _, sc := range t.Columns {
		i := slices.IndexFunc(cols, func(p pooledColumn) bool { return p.name == sc.Name })
		if i < 0 {
			return fmt.Errorf("pooled table %s has no column %s, which %s has: add it to the pooled table (ALTER TABLE %s ADD COLUMN %s %s)", name, sc.Name, t, name, pgx.Identifier{sc.Name}.Sanitize(), sc.Type)
		}
		if !sameType(sc, cols[i]) {
			return fmt.Errorf("column %s is %s in pooled table %s but %s in %s: make the types equal before demoting", sc.Name, cols[i].typ, name, sc.Type, t)
		}
	}
	for _, pc := range cols {
		if pc.notNull && !pc.fills && t.ColumnIndex(pc.name) < 0 {
			return fmt.Errorf("pooled table %s has column %s NOT NULL without a default, which %s lacks: give it a default (ALTER TABLE %s ALTER COLUMN %s SET DEFAULT ...)", name, pc.name, t, name, pgx.Identifier{pc.name}.Sanitize())
		}
	}
	if resumed {
		return nil
	}
	var any bool
	if err := dst.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+name+" WHERE "+t.TenantPredicate()+")").Scan(&any); err != nil {
		return fmt.Errorf("check pooled table %s: %w", name, err)
	}
	if any {
		return fmt.Errorf("pooled table %s already holds rows of tenant %s, and no earlier run of this demotion is recorded there: if the tenant was promoted from here, roll back or run cleanup of that promotion first; otherwise delete those rows", name, t.TenantLiteral)
	}
	return nil
}

// sameType compares a dedicated column's type with a pooled one's: built-in
// types exactly, user types by name (each database has its own copy, in a
// schema that may differ).
func sameType(sc promoted.Column, pc pooledColumn) bool {
	if sc.TypeOID < promoted.FirstUserOID || !pc.userTyp {
		return sc.Type == pc.typ
	}
	base := func(s string) string {
		if i := strings.LastIndex(s, "."); i >= 0 {
			return s[i+1:]
		}
		return s
	}
	return base(sc.Type) == base(pc.typ)
}

// checkCollisions refuses tenant rows whose values of a unique index of
// the pooled table (one without the tenant column, such as a key of id
// alone) another tenant already holds: the copy would fail on them
// halfway, and an update would reach the other tenant's row.
func checkCollisions(ctx context.Context, src, dst *pgx.Conn, t *promoted.Table) error {
	name := pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
	rows, err := dst.Query(ctx, `SELECT i.indexrelid::regclass::text, array_agg(a.attname::text ORDER BY k.ord)
	   FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
	   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
	  WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
	  GROUP BY i.indexrelid ORDER BY 1`, name)
	if err != nil {
		return fmt.Errorf("check unique indexes of %s: %w", name, err)
	}
	type index struct {
		name string
		cols []string
	}
	var indexes []index
	var ix index
	if _, err := pgx.ForEachRow(rows, []any{&ix.name, &ix.cols}, func() error {
		indexes = append(indexes, ix)
		return nil
	}); err != nil {
		return fmt.Errorf("check unique indexes of %s: %w", name, err)
	}
	tenantCol := t.Columns[t.Tenant].Name
	for _, ix := range indexes {
		if slices.Contains(ix.cols, tenantCol) || slices.ContainsFunc(ix.cols, func(c string) bool { return t.ColumnIndex(c) < 0 }) {
			continue
		}
		join := make([]string, len(ix.cols))
		for i, c := range ix.cols {
			q := pgx.Identifier{c}.Sanitize()
			join[i] = "p." + q + " = k." + q
		}
		found, err := probe(ctx, src, dst, t, ix.cols, func(tmp string) string {
			return "SELECT row(k.*)::text FROM " + tmp + " k JOIN " + name + " p ON " + strings.Join(join, " AND ") +
				" WHERE p." + pgx.Identifier{tenantCol}.Sanitize() + " IS DISTINCT FROM " + t.TenantValue() + " LIMIT 3"
		})
		if err != nil {
			return err
		}
		if len(found) > 0 {
			return fmt.Errorf("pooled table %s already holds (%s)=%s for another tenant (unique index %s), and tenant %s's rows in %s have them too: a demotion does not remap keys; change those keys on one side first",
				name, strings.Join(ix.cols, ", "), strings.Join(found, ", "), ix.name, t.TenantLiteral, t)
		}
	}
	return nil
}

// checkParents refuses tenant rows that point, by a foreign key of the
// pooled table to a table the demotion does not fill (the tenant's row
// in `tenants`, say), at a row the pooled database lacks. The copy runs
// with triggers off, so the key would not catch it.
func checkParents(ctx context.Context, src, dst *pgx.Conn, t *promoted.Table, targets map[string]bool) error {
	name := pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
	rows, err := dst.Query(ctx, `SELECT c.conname::text, n.nspname::text, r.relname::text,
	        array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
	        array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o)
	   FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid JOIN pg_namespace n ON n.oid = r.relnamespace
	  WHERE c.contype = 'f' AND c.conrelid = $1::regclass ORDER BY 1`, name)
	if err != nil {
		return fmt.Errorf("check foreign keys of %s: %w", name, err)
	}
	type fk struct {
		name, schema, table string
		cols, refs          []string
	}
	var fks []fk
	var f fk
	if _, err := pgx.ForEachRow(rows, []any{&f.name, &f.schema, &f.table, &f.cols, &f.refs}, func() error {
		fks = append(fks, f)
		return nil
	}); err != nil {
		return fmt.Errorf("check foreign keys of %s: %w", name, err)
	}
	for _, f := range fks {
		parent := pgx.Identifier{f.schema, f.table}.Sanitize()
		if targets[parent] || slices.ContainsFunc(f.cols, func(c string) bool { return t.ColumnIndex(c) < 0 }) {
			continue // filled by the same demotion, or not from the tenant's rows
		}
		match := make([]string, len(f.cols))
		for i := range f.cols {
			match[i] = "p." + pgx.Identifier{f.refs[i]}.Sanitize() + " = k." + pgx.Identifier{f.cols[i]}.Sanitize()
		}
		missing, err := probe(ctx, src, dst, t, f.cols, func(tmp string) string {
			return "SELECT row(k.*)::text FROM " + tmp + " k WHERE NOT EXISTS (SELECT 1 FROM " + parent + " p WHERE " + strings.Join(match, " AND ") + ") LIMIT 3"
		})
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			return fmt.Errorf("tenant %s's rows in %s point to %s (%s)=%s, which the pooled database lacks (foreign key %s of %s): insert those rows into %s first",
				t.TenantLiteral, t, parent, strings.Join(f.refs, ", "), strings.Join(missing, ", "), f.name, name, parent)
		}
	}
	return nil
}

// probe copies the distinct values of cols in the tenant's source rows
// (rows with a NULL among them left out) into a temporary table on the
// target and returns what query, given that table's name, finds there.
// Nothing is left behind: the table lives in a transaction that is rolled
// back.
func probe(ctx context.Context, src, dst *pgx.Conn, t *promoted.Table, cols []string, query func(tmp string) string) ([]string, error) {
	quoted := make([]string, len(cols))
	notNull := make([]string, len(cols))
	for i, c := range cols {
		quoted[i] = pgx.Identifier{c}.Sanitize()
		notNull[i] = quoted[i] + " IS NOT NULL"
	}
	list := strings.Join(quoted, ", ")
	target := pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
	tx, err := dst.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", target, err)
	}
	defer tx.Rollback(context.Background())
	const tmp = "promoted_probe"
	if _, err := tx.Exec(ctx, "CREATE TEMP TABLE "+tmp+" ON COMMIT DROP AS SELECT "+list+" FROM "+target+" WITH NO DATA"); err != nil {
		return nil, fmt.Errorf("check %s (a demotion needs TEMPORARY on the pooled database): %w", target, err)
	}
	out := fmt.Sprintf("COPY (SELECT DISTINCT %s FROM %s WHERE %s AND %s) TO STDOUT", list, t.SourceRelation(), t.TenantPredicate(), strings.Join(notNull, " AND "))
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<16)
		_, err := src.PgConn().CopyTo(ctx, bw, out)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
		done <- err
	}()
	_, inErr := dst.PgConn().CopyFrom(ctx, pr, "COPY "+tmp+" ("+list+") FROM STDIN")
	pr.CloseWithError(inErr)
	if err := <-done; err != nil {
		return nil, fmt.Errorf("check %s: read the tenant's keys from %s: %w", target, t, err)
	}
	if inErr != nil {
		return nil, fmt.Errorf("check %s: %w", target, inErr)
	}
	if _, err := tx.Exec(ctx, "ANALYZE "+tmp); err != nil {
		return nil, fmt.Errorf("check %s: %w", target, err)
	}
	rows, err := tx.Query(ctx, query(tmp))
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", target, err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", target, err)
	}
	return found, nil
}
