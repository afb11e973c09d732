package cutover

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// catalogDDL is the default routing table of DESIGN.md, and the record of
// flips promoted made: a flip and its record commit together, so after a
// crash a rerun knows whether the flip happened.
const catalogDDL = `CREATE SCHEMA IF NOT EXISTS promoted;
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
)`

// Entry is a tenant's catalog entry.
type Entry struct {
	Location, Schema string
	Version          int64
}

// Catalog is where the tenant's location is recorded.
type Catalog struct {
	Conn *pgx.Conn
	// FlipSQL, when set, flips the platform's own routing table instead
	// of promoted.tenant_catalog: $1 tenant, $2 location, $3 target schema.
	FlipSQL string
}

// Prepare creates the catalog tables and returns the tenant's entry,
// creating it (version 1, at the source) when the tenant has none yet.
func (c *Catalog) Prepare(ctx context.Context, tenant, location, schema string) (Entry, error) {
	if _, err := c.Conn.Exec(ctx, catalogDDL); err != nil {
		return Entry{}, fmt.Errorf("create catalog: %w", err)
	}
	if _, err := c.Conn.Exec(ctx, `INSERT INTO promoted.tenant_catalog (tenant_id, location, schema_name, version, updated_at)
	    VALUES ($1, $2, $3, 1, now()) ON CONFLICT (tenant_id) DO NOTHING`, tenant, location, schema); err != nil {
		return Entry{}, fmt.Errorf("create catalog entry: %w", err)
	}
	return c.Read(ctx, tenant)
}

// Read returns the tenant's entry.
func (c *Catalog) Read(ctx context.Context, tenant string) (Entry, error) {
	var e Entry
	var schema *string
	err := c.Conn.QueryRow(ctx, `SELECT location, schema_name, version FROM promoted.tenant_catalog WHERE tenant_id = $1`, tenant).
		Scan(&e.Location, &schema, &e.Version)
	if err != nil {
		return e, fmt.Errorf("read catalog entry of tenant %s: %w", tenant, err)
	}
	if schema != nil {
		e.Schema = *schema
	}
	return e, nil
}

// Flipped reports whether the job's flip committed, and to which version.
func (c *Catalog) Flipped(ctx context.Context, jobID string) (bool, int64, error) {
	var exists bool
	if err := c.Conn.QueryRow(ctx, `SELECT to_regclass('promoted.flips') IS NOT NULL`).Scan(&exists); err != nil {
		return false, 0, fmt.Errorf("read flips: %w", err)
	}
	if !exists {
		return false, 0, nil
	}
	var v *int64
	err := c.Conn.QueryRow(ctx, `SELECT version FROM promoted.flips WHERE job_id = $1`, jobID).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("read flips: %w", err)
	}
	if v == nil {
		return true, 0, nil
	}
	return true, *v, nil
}

// Flip moves the tenant's entry to location in one transaction: a
// compare-and-swap on the version read at prepare, the flip record, and a
// NOTIFY promoted_catalog so routers drop their cached entry.
func (c *Catalog) Flip(ctx context.Context, jobID, tenant, location, schema string, version int64) (int64, error) {
	tx, err := c.Conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("flip catalog: %w", err)
	}
	defer tx.Rollback(context.Background())
	var newVersion *int64
	if c.FlipSQL != "" {
		tag, err := tx.Exec(ctx, c.FlipSQL, tenant, location, schema)
		if err != nil {
			return 0, fmt.Errorf("flip catalog with --flip-sql: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return 0, fmt.Errorf("--flip-sql changed no row for tenant %s: check the statement ($1 tenant, $2 location, $3 schema)", tenant)
		}
	} else {
		var v int64
		err := tx.QueryRow(ctx, `UPDATE promoted.tenant_catalog SET location = $2, schema_name = $3, version = version + 1, updated_at = now()
		    WHERE tenant_id = $1 AND version = $4 RETURNING version`, tenant, location, schema, version).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("the catalog entry of tenant %s changed during the move (version is no longer %d): check who else moves it, then rerun", tenant, version)
		}
		if err != nil {
			return 0, fmt.Errorf("flip catalog: %w", err)
		}
		newVersion = &v
	}
	if _, err := tx.Exec(ctx, `INSERT INTO promoted.flips (job_id, tenant_id, location, schema_name, version) VALUES ($1, $2, $3, $4, $5)`,
		jobID, tenant, location, schema, newVersion); err != nil {
		return 0, fmt.Errorf("record flip: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify('promoted_catalog', $1)`, tenant); err != nil {
		return 0, fmt.Errorf("notify promoted_catalog: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("flip catalog: commit: %w", err)
	}
	if newVersion == nil {
		return 0, nil
	}
	return *newVersion, nil
}
