package job

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/snapshot"
)

// preflight checks the source before anything is created on either side:
// each refusal is one line naming the problem and the fix.
func preflight(ctx context.Context, src *pgx.Conn, cfg *Config, slotName string) error {
	var walLevel, role string
	var replication, super bool
	var maxSlots, usedSlots int
	var ourSlot bool
	err := src.QueryRow(ctx, `SELECT current_setting('wal_level'), current_user, r.rolreplication, r.rolsuper,
	        current_setting('max_replication_slots')::int,
	        (SELECT count(*) FROM pg_replication_slots)::int,
	        EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)
	   FROM pg_roles r WHERE r.rolname = current_user`, slotName).
		Scan(&walLevel, &role, &replication, &super, &maxSlots, &usedSlots, &ourSlot)
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("the source has wal_level=%s: set wal_level = logical in postgresql.conf and restart the source", walLevel)
	}
	if !replication && !super {
		return fmt.Errorf("role %s on the source lacks the REPLICATION attribute: run ALTER ROLE %s REPLICATION", role, pgx.Identifier{role}.Sanitize())
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

// checkTarget refuses a target that already holds the tenant's rows when
// no earlier run of this job is recorded there.
func checkTarget(ctx context.Context, dst *pgx.Conn, tables []*promoted.Table) error {
	for _, t := range tables {
		var exists bool
		if err := dst.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()).Scan(&exists); err != nil {
			return fmt.Errorf("check target %s.%s: %w", t.TargetSchema, t.TargetName, err)
		}
		if !exists {
			continue
		}
		var n int64
		q := fmt.Sprintf("SELECT count(*) FROM (SELECT 1 FROM %s WHERE %s LIMIT 1) x",
			pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize(), snapshot.TenantPredicate(t))
		if err := dst.QueryRow(ctx, q).Scan(&n); err != nil {
			return fmt.Errorf("check target %s.%s: %w", t.TargetSchema, t.TargetName, err)
		}
		if n > 0 {
			return fmt.Errorf("target table %s.%s already holds rows of tenant %s and no earlier run of this move is recorded there: delete them or choose another --target-schema", t.TargetSchema, t.TargetName, t.TenantLiteral)
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
		if t.ServerFilter || t.Columns[t.Tenant].TypeOID >= 16384 {
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
