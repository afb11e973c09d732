// Package cutover ends a promotion: it fences the tenant's writes on the
// source, drains the stream through a WAL marker written after the fence,
// verifies, syncs sequences and flips the tenant's catalog entry in one
// transaction, or, when anything fails or takes too long, disarms the fence
// and leaves the source authoritative.
package cutover

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
)

// FenceSQLState is the SQLSTATE of a write rejected by the fence. An
// application that sees it re-resolves the tenant's location and retries.
const FenceSQLState = "PM001"

// TriggerName is the fence trigger on every moved source table.
const TriggerName = "promoted_fence"

const fenceDDL = `CREATE SCHEMA IF NOT EXISTS promoted;
CREATE TABLE IF NOT EXISTS promoted.fence (
    schema_name text NOT NULL,
    tenant_id   text NOT NULL,
    job_id      text NOT NULL,
    armed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schema_name, tenant_id)
)`

// fenceFunction is the trigger function for tables whose tenant column is
// col: one index probe of promoted.fence per written row (two when an
// UPDATE changes the tenant), no dynamic SQL. It is VOLATILE, so in READ
// COMMITTED each statement sees a fence armed before it started; older
// snapshots are handled by the barrier after arming.
func fenceFunction(name, col string) string {
	c := pgx.Identifier{col}.Sanitize()
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION promoted.%[1]s() RETURNS trigger LANGUAGE plpgsql VOLATILE AS $promoted$
DECLARE
    v text;
BEGIN
    IF current_setting('promoted.bypass_fence', true) = 'on' THEN
        -- promoted cleanup deleting the moved tenant's old rows.
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM promoted.fence WHERE schema_name = TG_TABLE_SCHEMA) THEN
            RAISE EXCEPTION USING ERRCODE = '%[3]s',
                MESSAGE = format('%%I.%%I cannot be truncated while a tenant of it is moving (promoted)', TG_TABLE_SCHEMA, TG_TABLE_NAME);
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        v := NEW.%[2]s::text;
        IF EXISTS (SELECT 1 FROM promoted.fence WHERE schema_name = TG_TABLE_SCHEMA AND tenant_id = v) THEN
            RAISE EXCEPTION USING ERRCODE = '%[3]s',
                MESSAGE = format('tenant %%s is moving to a new location: writes to %%I.%%I are fenced; re-resolve the tenant''s location and retry', v, TG_TABLE_SCHEMA, TG_TABLE_NAME);
        END IF;
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.%[2]s IS DISTINCT FROM NEW.%[2]s) THEN
        v := OLD.%[2]s::text;
        IF EXISTS (SELECT 1 FROM promoted.fence WHERE schema_name = TG_TABLE_SCHEMA AND tenant_id = v) THEN
            RAISE EXCEPTION USING ERRCODE = '%[3]s',
                MESSAGE = format('tenant %%s is moving to a new location: writes to %%I.%%I are fenced; re-resolve the tenant''s location and retry', v, TG_TABLE_SCHEMA, TG_TABLE_NAME);
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $promoted$`, name, c, FenceSQLState)
}

func functionName(col string) string {
	h := sha256.Sum256([]byte(col))
	return "fence_" + hex.EncodeToString(h[:6])
}

// InstallFence creates the fence table and, on each moved source table, the
// fence triggers, enabled ALWAYS so sessions with session_replication_role
// = replica are fenced too. Each table is altered in its own short
// transaction under lock_timeout, retried on SQLSTATE 55P03, so the trigger
// DDL never queues every writer of a pooled table behind a long
// transaction. It is idempotent and runs at prepare, never at cutover.
func InstallFence(ctx context.Context, src *pgx.Conn, tables []*promoted.Table) error {
	if _, err := src.Exec(ctx, fenceDDL); err != nil {
		return fmt.Errorf("install fence: %w", err)
	}
	for _, t := range tables {
		col := t.Columns[t.Tenant].Name
		fn := functionName(col)
		if _, err := src.Exec(ctx, fenceFunction(fn, col)); err != nil {
			return fmt.Errorf("install fence function for %s: %w", t, err)
		}
		var n int
		if err := src.QueryRow(ctx, `SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname IN ($2, $3) AND tgenabled = 'A'`,
			pgx.Identifier{t.Schema, t.Name}.Sanitize(), TriggerName, TriggerName+"_truncate").Scan(&n); err != nil {
			return fmt.Errorf("install fence on %s: %w", t, err)
		}
		if n == 2 {
			continue
		}
		name := pgx.Identifier{t.Schema, t.Name}.Sanitize()
		stmt := fmt.Sprintf(`DROP TRIGGER IF EXISTS %[1]s ON %[2]s;
DROP TRIGGER IF EXISTS %[3]s ON %[2]s;
CREATE TRIGGER %[1]s BEFORE INSERT OR UPDATE OR DELETE ON %[2]s FOR EACH ROW EXECUTE FUNCTION promoted.%[4]s();
CREATE TRIGGER %[3]s BEFORE TRUNCATE ON %[2]s FOR EACH STATEMENT EXECUTE FUNCTION promoted.%[4]s();
ALTER TABLE %[2]s ENABLE ALWAYS TRIGGER %[1]s;
ALTER TABLE %[2]s ENABLE ALWAYS TRIGGER %[3]s`, TriggerName, name, TriggerName+"_truncate", fn)
		if err := ExecLockRetry(ctx, src, stmt); err != nil {
			return fmt.Errorf("install fence on %s: %w", t, err)
		}
	}
	return nil
}

// RemoveFence drops the fence triggers from the tables of schema when no
// fence of that schema is armed any more (another tenant's move may still
// need them).
func RemoveFence(ctx context.Context, src *pgx.Conn, schema string) error {
	var exists, armed bool
	if err := src.QueryRow(ctx, `SELECT to_regclass('promoted.fence') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return err
	}
	if err := src.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM promoted.fence WHERE schema_name = $1)`, schema).Scan(&armed); err != nil {
		return fmt.Errorf("remove fence: %w", err)
	}
	if armed {
		return nil
	}
	rows, err := src.Query(ctx, `SELECT DISTINCT c.relname FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
	    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND g.tgname = $2`, schema, TriggerName)
	if err != nil {
		return fmt.Errorf("remove fence: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("remove fence: %w", err)
	}
	for _, t := range tables {
		name := pgx.Identifier{schema, t}.Sanitize()
		stmt := fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s; DROP TRIGGER IF EXISTS %s ON %s", TriggerName, name, TriggerName+"_truncate", name)
		if err := ExecLockRetry(ctx, src, stmt); err != nil {
			return fmt.Errorf("remove fence from %s: %w", name, err)
		}
	}
	return nil
}

// ExecLockRetry runs DDL in one transaction under a short lock_timeout,
// retrying when the lock is not granted in time (SQLSTATE 55P03), so a
// waiting ALTER never queues every writer of a pooled table behind a long
// transaction.
func ExecLockRetry(ctx context.Context, conn *pgx.Conn, stmt string) error {
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		_, err = conn.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '100ms'; "+stmt+"; COMMIT")
		if err == nil {
			return nil
		}
		conn.Exec(ctx, "ROLLBACK")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(50+attempt*20) * time.Millisecond):
		}
	}
	return fmt.Errorf("lock not granted after 50 tries (a long transaction holds the table): %w", err)
}

// Arm inserts the tenant's fence row and returns the time from which every
// transaction still running must end before the fence can be trusted.
// Arming takes no table lock.
func Arm(ctx context.Context, src *pgx.Conn, schema, tenant, jobID string) (time.Time, error) {
	if _, err := src.Exec(ctx, `INSERT INTO promoted.fence (schema_name, tenant_id, job_id) VALUES ($1, $2, $3)
	    ON CONFLICT (schema_name, tenant_id) DO UPDATE SET job_id = EXCLUDED.job_id WHERE promoted.fence.job_id = EXCLUDED.job_id`, schema, tenant, jobID); err != nil {
		return time.Time{}, fmt.Errorf("arm fence: %w", err)
	}
	var owner string
	var at time.Time
	if err := src.QueryRow(ctx, `SELECT job_id, clock_timestamp() FROM promoted.fence WHERE schema_name = $1 AND tenant_id = $2`, schema, tenant).Scan(&owner, &at); err != nil {
		return time.Time{}, fmt.Errorf("arm fence: %w", err)
	}
	if owner != jobID {
		return time.Time{}, fmt.Errorf("tenant %s of schema %s is already fenced by move %s: finish or cancel that move first", tenant, schema, owner)
	}
	return at, nil
}

// Disarm removes this job's fence row: the tenant can write to the source
// again.
func Disarm(ctx context.Context, src *pgx.Conn, schema, tenant, jobID string) error {
	var exists bool
	if err := src.QueryRow(ctx, `SELECT to_regclass('promoted.fence') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return err
	}
	if _, err := src.Exec(ctx, `DELETE FROM promoted.fence WHERE schema_name = $1 AND tenant_id = $2 AND job_id = $3`, schema, tenant, jobID); err != nil {
		return fmt.Errorf("disarm fence: %w", err)
	}
	return nil
}

// Armed reports whether this job's fence is armed.
func Armed(ctx context.Context, src *pgx.Conn, schema, tenant, jobID string) (bool, error) {
	var exists, armed bool
	if err := src.QueryRow(ctx, `SELECT to_regclass('promoted.fence') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return false, err
	}
	err := src.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM promoted.fence WHERE schema_name = $1 AND tenant_id = $2 AND job_id = $3)`, schema, tenant, jobID).Scan(&armed)
	if err != nil {
		return false, fmt.Errorf("read fence: %w", err)
	}
	return armed, nil
}

// Barrier waits until every transaction of the source database that began
// before armedAt has ended, prepared transactions included: a REPEATABLE
// READ transaction whose snapshot predates the fence row cannot see it and
// could otherwise still write (hazards.md 9.1).
func Barrier(ctx context.Context, src *pgx.Conn, armedAt time.Time) error {
	for {
		var pids []string
		rows, err := src.Query(ctx, `SELECT 'pid ' || pid || ' (' || coalesce(state, '') || ', since ' || xact_start::text || ')'
		   FROM pg_stat_activity
		  WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND xact_start < $1
		 UNION ALL
		 SELECT 'prepared transaction ' || gid FROM pg_prepared_xacts WHERE database = current_database() AND prepared < $1`, armedAt)
		if err == nil {
			pids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			return fmt.Errorf("wait for transactions older than the fence: %w", err)
		}
		if len(pids) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("transactions older than the fence are still open (%s): end them or raise --cutover-timeout: %w", strings.Join(pids, ", "), ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// EmitMarker writes the transactional WAL marker that the stream must
// deliver before the target is known to hold every write made before the
// fence (DESIGN.md, write fence).
func EmitMarker(ctx context.Context, src *pgx.Conn, content string) (promoted.LSN, error) {
	var s string
	if err := src.QueryRow(ctx, `SELECT pg_logical_emit_message(true, 'promoted', $1)::text`, content).Scan(&s); err != nil {
		return 0, fmt.Errorf("write fence marker: %w", err)
	}
	return promoted.ParseLSN(s)
}
