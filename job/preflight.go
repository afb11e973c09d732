package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/state"
)

// preflight checks the source before anything is read or created: each
// refusal is one line naming the problem and the fix.
func preflight(ctx context.Context, src *pgx.Conn) error {
	var walLevel, role string
	var replication, super bool
	err := src.QueryRow(ctx, `SELECT current_setting('wal_level'), current_user, r.rolreplication, r.rolsuper
	   FROM pg_roles r WHERE r.rolname = current_user`).Scan(&walLevel, &role, &replication, &super)
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("the source has wal_level=%s: set wal_level = logical in postgresql.conf and restart the source", walLevel)
	}
	if !replication && !super {
		return fmt.Errorf("role %s on the source lacks the REPLICATION attribute: run ALTER ROLE %s REPLICATION", role, pgx.Identifier{role}.Sanitize())
	}
	return nil
}

// checkStateRights refuses, on the source or the catalog database, a role
// that cannot create (or use) schema promoted, where the move keeps its
// record, its fence and the catalog.
func checkStateRights(ctx context.Context, conn *pgx.Conn, side string) error {
	var role string
	var canCreateDB, exists, canCreate, canUse bool
	if err := conn.QueryRow(ctx, `SELECT current_user, has_database_privilege(current_database(), 'CREATE'),
	        to_regnamespace('promoted') IS NOT NULL,
	        coalesce(has_schema_privilege(to_regnamespace('promoted'), 'CREATE'), false),
	        coalesce(has_schema_privilege(to_regnamespace('promoted'), 'USAGE'), false)`).Scan(&role, &canCreateDB, &exists, &canCreate, &canUse); err != nil {
		return fmt.Errorf("preflight the %s: %w", side, err)
	}
	quoted := pgx.Identifier{role}.Sanitize()
	switch {
	case !exists && !canCreateDB:
		return fmt.Errorf("role %s cannot create schema promoted on the %s, where moves keep their record, fence and catalog: GRANT CREATE ON DATABASE (the %s database) TO %s", role, side, side, quoted)
	case exists && !(canCreate && canUse):
		return fmt.Errorf("role %s cannot create tables in schema promoted on the %s: GRANT USAGE, CREATE ON SCHEMA promoted TO %s (or ALTER SCHEMA promoted OWNER TO %s)", role, side, quoted, quoted)
	}
	return nil
}

// checkSlots refuses a source without a free replication slot for the
// move (unless its slot exists already).
func checkSlots(ctx context.Context, src *pgx.Conn, slotName string) error {
	var maxSlots, usedSlots int
	var ourSlot bool
	err := src.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int,
	        (SELECT count(*) FROM pg_replication_slots)::int,
	        EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, slotName).Scan(&maxSlots, &usedSlots, &ourSlot)
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if !ourSlot && usedSlots >= maxSlots {
		return fmt.Errorf("the source has no free replication slot (%d of max_replication_slots=%d in use): drop an unused slot or raise max_replication_slots", usedSlots, maxSlots)
	}
	return nil
}

// checkOwnership refuses tables the source role does not own:
// CREATE PUBLICATION needs the owner. (SELECT and the tenant's type are
// checked by the plan.)
func checkOwnership(ctx context.Context, src *pgx.Conn, tables []*promoted.Table) error {
	for _, t := range tables {
		var owns bool
		err := src.QueryRow(ctx, `SELECT pg_has_role(c.relowner, 'USAGE')
		   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).
			Scan(&owns)
		if err != nil {
			return fmt.Errorf("preflight %s: %w", t, err)
		}
		if !owns {
			return fmt.Errorf("the source role does not own %s, and CREATE PUBLICATION needs the owner: run promoted as the tables' owner (or a member of the owning role)", t)
		}
	}
	return nil
}

// checkTargetRole refuses, before the copy, a target role that could not
// finish the move: one that cannot set session_replication_role (the
// apply needs it, so target triggers and foreign keys do not fire twice),
// or cannot create the target schema or its tables.
func checkTargetRole(ctx context.Context, dst *pgx.Conn, schema string) error {
	var role string
	var canCreateDB, schemaExists, canCreateSchema, canState bool
	if err := dst.QueryRow(ctx, `SELECT current_user, has_database_privilege(current_database(), 'CREATE'),
	        to_regnamespace($1) IS NOT NULL, coalesce(has_schema_privilege(to_regnamespace($1), 'CREATE'), false),
	        coalesce(has_schema_privilege(to_regnamespace('promoted'), 'CREATE'), false)`,
		pgx.Identifier{schema}.Sanitize()).Scan(&role, &canCreateDB, &schemaExists, &canCreateSchema, &canState); err != nil {
		return fmt.Errorf("preflight the target: %w", err)
	}
	quoted := pgx.Identifier{role}.Sanitize()
	if !canCreateDB && !canState {
		return fmt.Errorf("role %s cannot create schema promoted (where a move records its progress) on the target: GRANT CREATE ON DATABASE (the target database) TO %s", role, quoted)
	}
	if !schemaExists && !canCreateDB {
		return fmt.Errorf("role %s cannot create schema %s on the target: GRANT CREATE ON DATABASE (the target database) TO %s, or create the schema for it first", role, schema, quoted)
	}
	if schemaExists && !canCreateSchema {
		return fmt.Errorf("role %s cannot create tables in schema %s on the target: GRANT CREATE ON SCHEMA %s TO %s", role, schema, pgx.Identifier{schema}.Sanitize(), quoted)
	}
	if _, err := dst.Exec(ctx, "BEGIN; SET LOCAL session_replication_role = replica; ROLLBACK"); err != nil {
		dst.Exec(context.Background(), "ROLLBACK")
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			return fmt.Errorf("role %s cannot set session_replication_role on the target, which the apply needs so target triggers and foreign keys do not fire twice: GRANT SET ON PARAMETER session_replication_role TO %s", role, quoted)
		}
		return fmt.Errorf("preflight the target: %w", err)
	}
	return nil
}

// checkNotEmpty refuses a tenant without a single row in any moved table:
// usually a typo in --tenant, which would otherwise be "promoted", with a
// catalog entry and a fence on an id nobody uses.
func checkNotEmpty(ctx context.Context, src *pgx.Conn, tables []*promoted.Table) error {
	for _, t := range tables {
		var any bool
		if err := src.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+t.SourceRelation()+" WHERE "+t.TenantPredicate()+")").Scan(&any); err != nil {
			return fmt.Errorf("preflight %s: %w", t, err)
		}
		if any {
			return nil
		}
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.String()
	}
	return fmt.Errorf("tenant %s has no rows in %s: check --tenant (and --tenant-column), or pass --allow-empty to move a tenant that has none yet", tables[0].TenantLiteral, strings.Join(names, ", "))
}

// checkTarget refuses a target that already holds the tenant's rows when
// no earlier run of this job is recorded there.
func checkTarget(ctx context.Context, dst *pgx.Conn, tables []*promoted.Table) error {
	for _, t := range tables {
		name := pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
		var exists bool
		if err := dst.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&exists); err != nil {
			return fmt.Errorf("check target %s.%s: %w", t.TargetSchema, t.TargetName, err)
		}
		if !exists {
			continue
		}
		var may bool
		if err := dst.QueryRow(ctx, `SELECT has_table_privilege($1, 'SELECT, INSERT, UPDATE, DELETE')`, name).Scan(&may); err != nil {
			return fmt.Errorf("check target %s.%s: %w", t.TargetSchema, t.TargetName, err)
		}
		if !may {
			return fmt.Errorf("target table %s.%s exists and the target role may not read and write it: GRANT SELECT, INSERT, UPDATE, DELETE ON %s to the role, or choose another --target-schema", t.TargetSchema, t.TargetName, name)
		}
		var any bool
		if err := dst.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+name+" WHERE "+t.TenantPredicate()+")").Scan(&any); err != nil {
			return fmt.Errorf("check target %s.%s: %w", t.TargetSchema, t.TargetName, err)
		}
		if any {
			return fmt.Errorf("target table %s.%s already holds rows of tenant %s and no earlier run of this move is recorded there: delete them or choose another --target-schema", t.TargetSchema, t.TargetName, t.TenantLiteral)
		}
	}
	return nil
}

// objectExists reports whether a pre-load object is on the target.
func objectExists(ctx context.Context, dst *pgx.Conn, kind, name string) (bool, error) {
	fn := map[string]string{state.CreatedSchema: "to_regnamespace", state.CreatedType: "to_regtype",
		state.CreatedSequence: "to_regclass", state.CreatedTable: "to_regclass"}[kind]
	if fn == "" {
		return false, fmt.Errorf("check target: unknown object kind %q", kind)
	}
	var ok bool
	if err := dst.QueryRow(ctx, "SELECT "+fn+"($1) IS NOT NULL", name).Scan(&ok); err != nil {
		return false, fmt.Errorf("check target %s %s: %w", kind, name, err)
	}
	return ok, nil
}

// dropCreated drops, on the target, what the move created there (and only
// that): its tables in one statement (their foreign keys into the other
// tables go with them), then its sequences, types and schema, each
// RESTRICT, so an object something else came to depend on is never
// dropped from under it. In tables that were there before the move (and
// may hold other tenants' rows), it deletes the tenant's rows.
func dropCreated(ctx context.Context, dst *pgx.Conn, jobID string, tables []*promoted.Table, log *slog.Logger) error {
	created, err := state.CreatedObjects(ctx, dst, jobID)
	if err != nil {
		return err
	}
	byKind := map[string][]state.Created{}
	for _, c := range created {
		byKind[c.Kind] = append(byKind[c.Kind], c)
	}
	var kept []*promoted.Table
	for _, t := range tables {
		name := pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
		if !slices.ContainsFunc(byKind[state.CreatedTable], func(c state.Created) bool { return c.Name == name }) {
			kept = append(kept, t)
		}
	}
	if ts := byKind[state.CreatedTable]; len(ts) > 0 {
		names := make([]string, len(ts))
		for i, c := range ts {
			names[i] = c.Name
		}
		if _, err := dst.Exec(ctx, "DROP TABLE IF EXISTS "+strings.Join(names, ", ")+" RESTRICT"); err != nil {
			return fmt.Errorf("drop the tables the move created on the target: %w", err)
		}
		for _, c := range ts {
			if err := state.ForgetCreated(ctx, dst, jobID, c); err != nil {
				return err
			}
		}
	}
	var found []*promoted.Table
	for _, t := range kept {
		ok, err := objectExists(ctx, dst, state.CreatedTable, pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize())
		if err != nil {
			return err
		}
		if ok {
			found = append(found, t)
		}
	}
	// All at once: a table whose rows others of them reference is emptied
	// after those (one at a time, the first parent would stop it).
	if _, err := cutover.DeleteTenantRows(ctx, dst, found, cutover.DeleteOptions{Target: true}, log); err != nil {
		return err
	}
	for _, kind := range []string{state.CreatedSequence, state.CreatedType, state.CreatedSchema} {
		list := byKind[kind]
		for i := len(list) - 1; i >= 0; i-- {
			c := list[i]
			if _, err := dst.Exec(ctx, "DROP "+strings.ToUpper(kind)+" IF EXISTS "+c.Name+" RESTRICT"); err != nil {
				return fmt.Errorf("drop %s %s, which the move created on the target: %w", kind, c.Name, err)
			}
			if err := state.ForgetCreated(ctx, dst, jobID, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// sameDatabase reports whether two connections reach the same database.
func sameDatabase(ctx context.Context, a, b *pgx.Conn) (bool, error) {
	q := `SELECT (SELECT system_identifier FROM pg_control_system())::text || '/' || d.oid::text FROM pg_database d WHERE d.datname = current_database()`
	var x, y string
	if err := a.QueryRow(ctx, q).Scan(&x); err != nil {
		return false, fmt.Errorf("identify source database: %w", err)
	}
	if err := b.QueryRow(ctx, q).Scan(&y); err != nil {
		return false, fmt.Errorf("identify target database: %w", err)
	}
	return x == y, nil
}

// fixReplicaIdentity gives each table the server cannot filter a replica
// identity that covers the tenant column: a unique (tenant, key) index,
// built concurrently, when the tenant column is NOT NULL; FULL otherwise.
func fixReplicaIdentity(ctx context.Context, src *pgx.Conn, tables []*promoted.Table) error {
	for _, t := range tables {
		if t.ServerFilter || t.Columns[t.Tenant].TypeOID >= promoted.FirstUserOID {
			continue
		}
		name := pgx.Identifier{t.Schema, t.Name}.Sanitize()
		var stmt string
		if t.Columns[t.Tenant].NotNull {
			cols := []string{pgx.Identifier{t.Columns[t.Tenant].Name}.Sanitize()}
			for _, k := range t.PrimaryKey {
				if k != t.Tenant {
					cols = append(cols, pgx.Identifier{t.Columns[k].Name}.Sanitize())
				}
			}
			idx := truncateIdent(t.Name + "_promoted_ri")
			if _, err := src.Exec(ctx, fmt.Sprintf("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS %s ON %s (%s)",
				pgx.Identifier{idx}.Sanitize(), name, strings.Join(cols, ", "))); err != nil {
				return fmt.Errorf("fix replica identity of %s: %w", t, err)
			}
			stmt = fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY USING INDEX %s", name, pgx.Identifier{idx}.Sanitize())
		} else {
			stmt = fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", name)
		}
		if err := cutover.ExecLockRetry(ctx, src, stmt); err != nil {
			return fmt.Errorf("fix replica identity of %s: %w", t, err)
		}
		t.ServerFilter = true
	}
	return nil
}

func truncateIdent(s string) string {
	if len(s) > 63 {
		return s[:63]
	}
	return s
}
