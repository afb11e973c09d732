package apply

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// ProgressDDL creates the target's job table. The applied LSN lives in the
// target, next to the data it covers, and is written in the same
// transaction as the changes (invariant 2): resume needs nothing else.
const ProgressDDL = `CREATE SCHEMA IF NOT EXISTS promoted;
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
)`

// Phases of a job as recorded in promoted.progress.
const (
	PhaseSnapshot = "snapshot" // copy under way: a crash here restarts the copy
	PhaseCatchup  = "catchup"  // copy done: resume streaming from applied_lsn
)

// Progress is one job's row in the target's promoted.progress.
type Progress struct {
	JobID, Tenant, SourceSchema, TargetSchema string
	Slot, Publication, Phase                  string
	ConsistentPoint, Applied                  promoted.LSN
	RowsCopied                                int64
}

// EnsureProgressTable creates promoted.progress if missing.
func EnsureProgressTable(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, ProgressDDL); err != nil {
		return fmt.Errorf("create promoted.progress on the target: %w", err)
	}
	return nil
}

// ReadProgress returns the job's progress, or nil when the target has none.
func ReadProgress(ctx context.Context, conn *pgx.Conn, jobID string) (*Progress, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('promoted.progress') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, fmt.Errorf("read progress: %w", err)
	}
	if !exists {
		return nil, nil
	}
	p := &Progress{JobID: jobID}
	var cp, applied *string
	err := conn.QueryRow(ctx, `SELECT tenant, source_schema, target_schema, slot_name, publication, phase,
	        consistent_point::text, applied_lsn::text, rows_copied
	   FROM promoted.progress WHERE job_id = $1`, jobID).
		Scan(&p.Tenant, &p.SourceSchema, &p.TargetSchema, &p.Slot, &p.Publication, &p.Phase, &cp, &applied, &p.RowsCopied)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read progress: %w", err)
	}
	if cp != nil {
		if p.ConsistentPoint, err = promoted.ParseLSN(*cp); err != nil {
			return nil, err
		}
	}
	if applied != nil {
		if p.Applied, err = promoted.ParseLSN(*applied); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// WriteProgress inserts or replaces the job's row.
func WriteProgress(ctx context.Context, conn *pgx.Conn, p *Progress) error {
	var cp, applied any
	if p.ConsistentPoint != 0 {
		cp = p.ConsistentPoint.String()
	}
	if p.Applied != 0 {
		applied = p.Applied.String()
	}
	_, err := conn.Exec(ctx, `INSERT INTO promoted.progress
	    (job_id, tenant, source_schema, target_schema, slot_name, publication, phase, consistent_point, applied_lsn, rows_copied)
	    VALUES ($1, $2, $3, $4, $5, $6, $7, $8::pg_lsn, $9::pg_lsn, $10)
	    ON CONFLICT (job_id) DO UPDATE SET tenant = EXCLUDED.tenant, source_schema = EXCLUDED.source_schema,
	      target_schema = EXCLUDED.target_schema, slot_name = EXCLUDED.slot_name, publication = EXCLUDED.publication,
	      phase = EXCLUDED.phase, consistent_point = EXCLUDED.consistent_point, applied_lsn = EXCLUDED.applied_lsn,
	      rows_copied = EXCLUDED.rows_copied, updated_at = now()`,
		p.JobID, p.Tenant, p.SourceSchema, p.TargetSchema, p.Slot, p.Publication, p.Phase, cp, applied, p.RowsCopied)
	if err != nil {
		return fmt.Errorf("write progress: %w", err)
	}
	return nil
}

// DeleteProgress forgets the job on the target (cancel, restart).
func DeleteProgress(ctx context.Context, conn *pgx.Conn, jobID string) error {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('promoted.progress') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return err
	}
	_, err := conn.Exec(ctx, `DELETE FROM promoted.progress WHERE job_id = $1`, jobID)
	return err
}
