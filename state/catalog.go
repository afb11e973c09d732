package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/db"
)

// Entry is a tenant's catalog entry.
type Entry struct {
	Location, Schema string
	Version          int64
}

// Catalog is where the tenant's location is recorded: the default routing
// table of DESIGN.md, and the record of the flips promoted made. A flip and
// its record commit together, so after a crash a rerun knows whether the
// flip happened.
type Catalog struct {
	Conn *pgx.Conn
	// DSN opens a fresh session when Conn may be dead: the outcome of a
	// flip whose COMMIT failed is asked there, never on the failed
	// session.
	DSN string
	// FlipSQL, when set, flips the platform's own routing table instead
	// of promoted.tenant_catalog: $1 tenant, $2 location, $3 target schema.
	FlipSQL string
}

// ErrOutcomeUnknown wraps a flip whose COMMIT was sent but not answered:
// the flip may or may not have committed.
var ErrOutcomeUnknown = errors.New("the catalog flip's outcome is unknown")

// Prepare creates the catalog tables and returns the tenant's entry,
// creating it (version 1, at location) when the tenant has none yet.
func (c *Catalog) Prepare(ctx context.Context, tenant, location, schema string) (Entry, error) {
	if err := EnsureCatalog(ctx, c.Conn); err != nil {
		return Entry{}, err
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

// flipLock is the advisory lock a flip transaction holds until it ends:
// whoever asks whether the flip committed waits on it, so a flip still in
// flight (its COMMIT sent, the answer lost) is never taken for one that
// did not happen.
const flipLock = `hashtext('promoted.flip'), hashtext($1)`

// Flipped reports whether the job's flip committed, and to which version.
// It asks on a fresh session and first waits for any flip transaction of
// the job still running, so its answer is definitive; ctx bounds the wait.
func (c *Catalog) Flipped(ctx context.Context, jobID string) (bool, int64, error) {
	conn, err := db.Open(ctx, db.Catalog, c.DSN, "promoted")
	if err != nil {
		return false, 0, err
	}
	defer conn.Close(context.Background())
	if ok, err := exists(ctx, conn, "flips"); err != nil || !ok {
		return false, 0, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, 0, fmt.Errorf("read flips: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared(`+flipLock+`)`, jobID); err != nil {
		return false, 0, fmt.Errorf("wait for the flip transaction to end: %w", err)
	}
	var v *int64
	err = tx.QueryRow(ctx, `SELECT version FROM promoted.flips WHERE job_id = $1`, jobID).Scan(&v)
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

// Hooks let tests fail a flip at its commit.
type Hooks struct {
	// BeforeCommit runs just before the flip's COMMIT is sent.
	BeforeCommit func()
}

// Flip moves the tenant's entry to location in one transaction: a
// compare-and-swap on the version read at prepare, the flip record, and a
// NOTIFY promoted_catalog so routers drop their cached entry. An error
// from the COMMIT itself wraps ErrOutcomeUnknown.
func (c *Catalog) Flip(ctx context.Context, jobID, tenant, location, schema string, version int64, hooks Hooks) (int64, error) {
	tx, err := c.Conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("flip catalog: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(`+flipLock+`)`, jobID); err != nil {
		return 0, fmt.Errorf("flip catalog: %w", err)
	}
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
	if hooks.BeforeCommit != nil {
		hooks.BeforeCommit()
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("%w: commit: %w", ErrOutcomeUnknown, err)
	}
	if newVersion == nil {
		return 0, nil
	}
	return *newVersion, nil
}

// SettleFlip asks, on a fresh session, whether a flip whose COMMIT went
// unanswered committed, retrying for up to wait while the catalog
// database cannot be reached. It returns an error only when the outcome
// is still unknown.
func (c *Catalog) SettleFlip(jobID string, wait time.Duration) (bool, int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
		ok, v, err := c.Flipped(qctx, jobID)
		qcancel()
		if err == nil {
			return ok, v, nil
		}
		select {
		case <-ctx.Done():
			return false, 0, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ForgetFlip deletes a move's flip record once the move is undone (a
// promotion rolled back): promoting the tenant again is then a new move,
// not one that "already flipped".
func ForgetFlip(ctx context.Context, conn *pgx.Conn, jobID string) error {
	if ok, err := exists(ctx, conn, "flips"); err != nil || !ok {
		return err
	}
	if _, err := conn.Exec(ctx, `DELETE FROM promoted.flips WHERE job_id = $1`, jobID); err != nil {
		return fmt.Errorf("forget the flip of move %s: %w", jobID, err)
	}
	return nil
}
