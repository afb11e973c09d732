// Package state owns every table promoted keeps in the databases it works
// on, all in the schema promoted: on the source the record of each move
// (jobs) and the write fence (fence, fence_bypass); in the catalog database
// the tenants' locations (tenant_catalog) and the record of flips (flips);
// on the target the applied position of each move (progress) and what the
// move created there (created). Their DDL, the migrations between versions
// of promoted, and every read and write of them live here, so `status`,
// the end commands and a rerun after a crash all read one truth.
package state

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is a session or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Each side's DDL is idempotent: CREATE ... IF NOT EXISTS for a new
// database, then ADD COLUMN IF NOT EXISTS for every column a later
// version of promoted added, so an older installation is migrated in
// place by the next run.
const (
	sourceDDL = `CREATE SCHEMA IF NOT EXISTS promoted;
GRANT USAGE ON SCHEMA promoted TO PUBLIC;
CREATE TABLE IF NOT EXISTS promoted.jobs (
    job_id      text PRIMARY KEY,
    tenant_id   text NOT NULL,
    schema_name text NOT NULL,
    kind        text NOT NULL,
    target      text NOT NULL,
    phase       text NOT NULL,
    outcome     text,
    blocked_ms  bigint,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS tenant_column text;
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS tenant_type text;
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS target_schema text;
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS tables text[];
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS definitions jsonb;
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS reverse_lsn pg_lsn;
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS rows_copied bigint;
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS rows_estimated bigint;
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS lag_seconds double precision;
ALTER TABLE promoted.jobs ADD COLUMN IF NOT EXISTS lag_at timestamptz;
CREATE TABLE IF NOT EXISTS promoted.fence (
    schema_name text NOT NULL,
    tenant_id   text NOT NULL,
    job_id      text NOT NULL,
    armed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schema_name, tenant_id)
);
ALTER TABLE promoted.fence ADD COLUMN IF NOT EXISTS tables text[];
ALTER TABLE promoted.fence ADD COLUMN IF NOT EXISTS armed boolean NOT NULL DEFAULT true;
ALTER TABLE promoted.fence ADD COLUMN IF NOT EXISTS epoch integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS promoted.fence_bypass (xid xid8 PRIMARY KEY);
CREATE TABLE IF NOT EXISTS promoted.changed (
    job_id     text NOT NULL,
    table_name text NOT NULL,
    key        jsonb NOT NULL,
    epoch      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, epoch, table_name, key)
);
ALTER TABLE promoted.changed ADD COLUMN IF NOT EXISTS epoch integer NOT NULL DEFAULT 0;
DO $$BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'promoted.changed'::regclass AND contype = 'p' AND cardinality(conkey) = 4) THEN
        ALTER TABLE promoted.changed DROP CONSTRAINT IF EXISTS changed_pkey, ADD PRIMARY KEY (job_id, epoch, table_name, key);
    END IF;
END$$;
REVOKE ALL ON promoted.jobs, promoted.fence, promoted.fence_bypass, promoted.changed FROM PUBLIC`

	catalogDDL = `CREATE SCHEMA IF NOT EXISTS promoted;
CREATE TABLE IF NOT EXISTS promoted.tenant_catalog (
    tenant_id   text PRIMARY KEY,
    location    text NOT NULL,
    schema_name text,
    version     bigint NOT NULL,
    updated_at  timestamptz
);
CREATE TABLE IF NOT EXISTS promoted.flips (
    job_id      text PRIMARY KEY,
    tenant_id   text NOT NULL,
    location    text NOT NULL,
    schema_name text,
    version     bigint,
    flipped_at  timestamptz NOT NULL DEFAULT now()
);
GRANT USAGE ON SCHEMA promoted TO PUBLIC;
GRANT SELECT ON promoted.tenant_catalog TO PUBLIC`

	targetDDL = `CREATE SCHEMA IF NOT EXISTS promoted;
CREATE TABLE IF NOT EXISTS promoted.progress (
    job_id           text PRIMARY KEY,
    tenant           text NOT NULL,
    source_schema    text NOT NULL,
    target_schema    text NOT NULL,
    slot_name        text NOT NULL,
    publication      text NOT NULL,
    phase            text NOT NULL,
    consistent_point pg_lsn,
    applied_lsn      pg_lsn,
    marker           text,
    marker_lsn       pg_lsn,
    rows_copied      bigint NOT NULL DEFAULT 0,
    started_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS promoted.created (
    job_id text NOT NULL,
    kind   text NOT NULL,
    name   text NOT NULL,
    seq    bigserial,
    PRIMARY KEY (job_id, kind, name)
)`
)

// ddlLock goes before each DDL script: the script runs as one implicit
// transaction (simple protocol, no parameters), which holds the lock to its
// end. Without it, two moves starting at once on a database promoted never
// wrote to race in CREATE SCHEMA IF NOT EXISTS, and one fails with a
// unique violation (IF NOT EXISTS does not serialize concurrent creators).
const ddlLock = `SELECT pg_advisory_xact_lock(hashtext('promoted.ddl'));
`

// EnsureSource creates or migrates the source's tables.
func EnsureSource(ctx context.Context, q Querier) error {
	if _, err := q.Exec(ctx, ddlLock+sourceDDL); err != nil {
		return fmt.Errorf("create promoted's tables on the source: %w", err)
	}
	return nil
}

// EnsureCatalog creates or migrates the catalog's tables. The catalog is
// readable by every role: applications route by it, and it holds
// locations without passwords.
func EnsureCatalog(ctx context.Context, q Querier) error {
	if _, err := q.Exec(ctx, ddlLock+catalogDDL); err != nil {
		return fmt.Errorf("create promoted's catalog: %w", err)
	}
	return nil
}

// EnsureTarget creates or migrates the target's tables.
func EnsureTarget(ctx context.Context, q Querier) error {
	if _, err := q.Exec(ctx, ddlLock+targetDDL); err != nil {
		return fmt.Errorf("create promoted's tables on the target: %w", err)
	}
	return nil
}

// exists reports whether promoted.<table> exists: readers on a database
// promoted never wrote to find nothing, and create nothing.
func exists(ctx context.Context, q Querier, table string) (bool, error) {
	var ok bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, "promoted."+table).Scan(&ok); err != nil {
		return false, fmt.Errorf("look for promoted.%s: %w", table, err)
	}
	return ok, nil
}

// undefined reports an error about a table that does not exist (42P01) or
// a column an older version lacks (42703).
func undefined(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42703")
}
