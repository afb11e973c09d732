package job

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// jobsDDL is the source's record of moves: one row per job with its phase
// and outcome, so an operator (and `promoted status`) can see what ran,
// and a rerun after a crash knows how far the cutover got.
const jobsDDL = `CREATE SCHEMA IF NOT EXISTS promoted;
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
)`

// Phases recorded in promoted.jobs beyond those of promoted.progress.
const (
	PhaseArmed     = "cutover"   // the fence may be armed
	PhaseDone      = "done"      // flipped; the slot is dropped
	PhaseFailed    = "failed"    // the last attempt failed; the source is authoritative
	PhaseCancelled = "cancelled" // cancelled; slot, publication and fence dropped
	PhaseCleaned   = "cleaned"   // the tenant's old rows are deleted from the source
)

// lease is a session-level advisory lock on the source held for the
// job's lifetime: a second daemon on the same tenant is refused while the
// first runs, and a crashed daemon's lease ends with its session.
type lease struct{ conn *pgx.Conn }

func acquireLease(ctx context.Context, dsn, jobID, tenant string) (*lease, error) {
	conn, err := connect(ctx, dsn, "source", "promoted-lease")
	if err != nil {
		return nil, err
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('promoted'), hashtext($1))`, jobID).Scan(&ok); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("take the job's lease: %w", err)
	}
	if !ok {
		var holder string
		conn.QueryRow(ctx, `SELECT coalesce(string_agg(a.pid || ' (' || a.application_name || ' from ' || coalesce(a.client_addr::text, 'local') || ')', ', '), 'unknown')
		    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		   WHERE l.locktype = 'advisory' AND l.classid = hashtext('promoted')::oid AND l.objid = hashtext($1)::oid AND l.granted`, jobID).Scan(&holder)
		conn.Close(context.Background())
		return nil, fmt.Errorf("another promoted is already moving tenant %s (job %s, source session %s): wait for it to finish, or stop it first", tenant, jobID, holder)
	}
	return &lease{conn: conn}, nil
}

func (l *lease) release() {
	if l != nil {
		l.conn.Close(context.Background())
	}
}

// recordJob creates or updates the job's row on the source.
func recordJob(ctx context.Context, src *pgx.Conn, cfg *Config, jobID, kind, phase string) error {
	_, err := src.Exec(ctx, jobsDDL)
	if err == nil {
		_, err = src.Exec(ctx, `INSERT INTO promoted.jobs (job_id, tenant_id, schema_name, kind, target, phase)
		    VALUES ($1, $2, $3, $4, $5, $6)
		    ON CONFLICT (job_id) DO UPDATE SET kind = EXCLUDED.kind, target = EXCLUDED.target, phase = EXCLUDED.phase, outcome = NULL, updated_at = now()`,
			jobID, cfg.Tenant, cfg.Schema, kind, Redact(cfg.TargetDSN), phase)
	}
	if err != nil {
		return fmt.Errorf("record job on the source: %w", err)
	}
	return nil
}

// setJobPhase updates the job's phase and outcome.
func setJobPhase(ctx context.Context, src *pgx.Conn, jobID, phase, outcome string, blockedMS *int64) error {
	if _, err := src.Exec(ctx, `UPDATE promoted.jobs SET phase = $2, outcome = nullif($3, ''), blocked_ms = coalesce($4, blocked_ms), updated_at = now() WHERE job_id = $1`,
		jobID, phase, outcome, blockedMS); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return nil // no jobs table: a replicate-only source
		}
		return fmt.Errorf("record job phase: %w", err)
	}
	return nil
}

// jobPhase reads the job's recorded phase, or "".
func jobPhase(ctx context.Context, src *pgx.Conn, jobID string) (string, error) {
	var exists bool
	if err := src.QueryRow(ctx, `SELECT to_regclass('promoted.jobs') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return "", err
	}
	var phase string
	err := src.QueryRow(ctx, `SELECT phase FROM promoted.jobs WHERE job_id = $1`, jobID).Scan(&phase)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return phase, err
}
