package state

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// Phases of a job as recorded in promoted.progress on the target.
const (
	ProgressSnapshot = "snapshot" // copy under way: a crash here restarts the copy
	ProgressCatchup  = "catchup"  // copy done: resume streaming from applied_lsn
)

// Progress is one job's row in the target's promoted.progress. The applied
// LSN lives in the target, next to the data it covers, and is written in
// the same transaction as the changes (invariant 2): resume needs nothing
// else.
type Progress struct {
	JobID, Tenant, SourceSchema, TargetSchema string
	Slot, Publication, Phase                  string
	ConsistentPoint, Applied                  promoted.LSN
	RowsCopied                                int64
}

// AdvanceSQL records a group's applied LSN ($2) for the job ($1) inside
// the apply's own transaction.
const AdvanceSQL = `UPDATE promoted.progress SET applied_lsn = $2::pg_lsn, updated_at = now() WHERE job_id = $1`

// MarkerSQL records that the fence marker $2 was applied, ending at $3.
const MarkerSQL = `UPDATE promoted.progress SET marker = $2, marker_lsn = $3::pg_lsn WHERE job_id = $1`

// ReadProgress returns the job's progress, or nil when the target has none.
func ReadProgress(ctx context.Context, q Querier, jobID string) (*Progress, error) {
	if ok, err := exists(ctx, q, "progress"); err != nil || !ok {
		return nil, err
	}
	p := &Progress{JobID: jobID}
	var cp, applied *string
	err := q.QueryRow(ctx, `SELECT tenant, source_schema, target_schema, slot_name, publication, phase,
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
func WriteProgress(ctx context.Context, q Querier, p *Progress) error {
	if err := EnsureTarget(ctx, q); err != nil {
		return err
	}
	var cp, applied any
	if p.ConsistentPoint != 0 {
		cp = p.ConsistentPoint.String()
	}
	if p.Applied != 0 {
		applied = p.Applied.String()
	}
	_, err := q.Exec(ctx, `INSERT INTO promoted.progress
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

// DeleteProgress forgets the job on the target, and what it created there.
func DeleteProgress(ctx context.Context, q Querier, jobID string) error {
	for _, table := range []string{"progress", "created"} {
		if ok, err := exists(ctx, q, table); err != nil {
			return err
		} else if !ok {
			continue
		}
		if _, err := q.Exec(ctx, `DELETE FROM promoted.`+table+` WHERE job_id = $1`, jobID); err != nil {
			return fmt.Errorf("forget the move on the target: %w", err)
		}
	}
	return nil
}

// Object kinds the target records as created by a move.
const (
	CreatedSchema   = "schema"
	CreatedType     = "type"
	CreatedSequence = "sequence"
	CreatedTable    = "table"
)

// Created is an object a move created on the target: the only objects
// `cancel --drop-target` may drop. Name is quoted and schema-qualified.
type Created struct{ Kind, Name string }

// RecordCreated notes, before the object is created, that the move
// creates it: a crash in between leaves a note about an object that does
// not exist, which a drop skips, never an object the move made but forgot.
func RecordCreated(ctx context.Context, q Querier, jobID string, c Created) error {
	if _, err := q.Exec(ctx, `INSERT INTO promoted.created (job_id, kind, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		jobID, c.Kind, c.Name); err != nil {
		return fmt.Errorf("record what the move creates on the target: %w", err)
	}
	return nil
}

// CreatedObjects lists what the move created on the target, in the order
// it created them.
func CreatedObjects(ctx context.Context, q Querier, jobID string) ([]Created, error) {
	if ok, err := exists(ctx, q, "created"); err != nil || !ok {
		return nil, err
	}
	rows, err := q.Query(ctx, `SELECT kind, name FROM promoted.created WHERE job_id = $1 ORDER BY seq`, jobID)
	if err != nil {
		return nil, fmt.Errorf("read what the move created on the target: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Created, error) {
		var c Created
		err := r.Scan(&c.Kind, &c.Name)
		return c, err
	})
}

// ForgetCreated removes the record of one created object, once dropped.
func ForgetCreated(ctx context.Context, q Querier, jobID string, c Created) error {
	_, err := q.Exec(ctx, `DELETE FROM promoted.created WHERE job_id = $1 AND kind = $2 AND name = $3`, jobID, c.Kind, c.Name)
	if err != nil {
		return fmt.Errorf("forget a dropped object: %w", err)
	}
	return nil
}
