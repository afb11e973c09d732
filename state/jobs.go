package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Job kinds.
const (
	KindPromote   = "promote"
	KindReplicate = "replicate"
	// KindDemote is a move from a dedicated schema or database into the
	// pooled tables.
	KindDemote = "demote"
	// KindRollback streams a promoted tenant's changes back from its
	// dedicated side into the pooled rows the promotion left.
	KindRollback = "rollback"
)

// Phases a job records on the source.
const (
	PhasePrepare   = "prepare"   // recorded before anything else is created
	PhaseCopy      = "snapshot"  // the copy runs
	PhaseCatchup   = "catchup"   // streaming
	PhaseArmed     = "cutover"   // the fence may be armed
	PhaseFlipped   = "flipped"   // the catalog flipped; the slot may remain
	PhaseDone      = "done"      // flipped, slot and publication dropped
	PhaseFailed    = "failed"    // the last attempt failed; the source is authoritative
	PhaseCancelled = "cancelled" // cancelled; slot, publication and fence dropped
	PhaseCleaned   = "cleaned"   // the tenant's old rows are deleted from the source
	// PhaseRolledBack is a promotion undone by `rollback`: the pooled rows
	// are authoritative again, and its cleanup must never run.
	PhaseRolledBack = "rolledback"
)

// Job is a move's record on the source: what it moves, where to, and how
// far it got. It is written before the move creates anything, and the end
// commands (cancel, cleanup) act on this record, never on their own
// flags: a cleanup given other tables or another tenant column than the
// move had would delete rows that were never copied.
type Job struct {
	ID     string
	Tenant string // the tenant as the source prints the tenant column's type
	Schema string // the source schema
	Kind   string
	// Target is the target's location, without a password.
	Target       string
	TargetSchema string
	TenantColumn string
	// TenantType is format_type of the tenant column: the end commands
	// cast --tenant to it to find the move (042 and 42 are one tenant).
	TenantType string
	Tables     []string
	// Definitions are the moved tables' column definitions when the copy
	// began: a change made since, even while no promoted ran, stops the
	// move before the flip.
	Definitions map[string]string
	// ReverseLSN, on a promotion's record, is where the rollback slot on
	// the target starts (empty: no rollback is possible).
	ReverseLSN string
	Phase      string
	Outcome    string
	BlockedMS  *int64
	// RowsCopied and RowsEstimated are the copy's progress as the move
	// last recorded it, for status (nil before the copy).
	RowsCopied, RowsEstimated *int64
	// LagSeconds is the catch-up's lag in time as the move last recorded
	// it, LagAge how long ago (by the source's clock); nil before the
	// catch-up.
	LagSeconds, LagAge *float64
	StartedAt          time.Time
	UpdatedAt          time.Time
}

// Active reports whether the move may still need its fence triggers and
// slot: it has been neither cancelled nor cleaned up.
func (j *Job) Active() bool {
	return j.Phase != PhaseCancelled && j.Phase != PhaseCleaned && j.Phase != PhaseRolledBack
}

// RecordJob creates the job's record or, for a rerun, updates its phase;
// the rest of an existing record is what the move was started with and
// is kept.
func RecordJob(ctx context.Context, q Querier, j *Job) error {
	if err := EnsureSource(ctx, q); err != nil {
		return err
	}
	// Definitions are replaced only when given (a move that starts its
	// copy); a resumed move keeps those its copy began with.
	_, err := q.Exec(ctx, `INSERT INTO promoted.jobs (job_id, tenant_id, schema_name, kind, target, phase,
	        tenant_column, tenant_type, target_schema, tables, definitions)
	    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
	    ON CONFLICT (job_id) DO UPDATE SET kind = EXCLUDED.kind, target = EXCLUDED.target, phase = EXCLUDED.phase,
	        tenant_column = EXCLUDED.tenant_column, tenant_type = EXCLUDED.tenant_type,
	        target_schema = EXCLUDED.target_schema, tables = EXCLUDED.tables,
	        definitions = coalesce(EXCLUDED.definitions, promoted.jobs.definitions), outcome = NULL, updated_at = now()`,
		j.ID, j.Tenant, j.Schema, j.Kind, j.Target, j.Phase, j.TenantColumn, j.TenantType, j.TargetSchema, j.Tables, j.Definitions)
	if err != nil {
		return fmt.Errorf("record the move on the source: %w", err)
	}
	return nil
}

const jobColumns = `job_id, tenant_id, schema_name, kind, target, phase, coalesce(outcome, ''), blocked_ms, started_at, updated_at,
    coalesce(tenant_column, ''), coalesce(tenant_type, ''), coalesce(target_schema, ''), coalesce(tables, '{}'), definitions,
    coalesce(reverse_lsn::text, ''), rows_copied, rows_estimated, lag_seconds, extract(epoch FROM now() - lag_at)::float8`

func scanJob(row pgx.Row) (*Job, error) {
	j := &Job{}
	err := row.Scan(&j.ID, &j.Tenant, &j.Schema, &j.Kind, &j.Target, &j.Phase, &j.Outcome, &j.BlockedMS, &j.StartedAt, &j.UpdatedAt,
		&j.TenantColumn, &j.TenantType, &j.TargetSchema, &j.Tables, &j.Definitions, &j.ReverseLSN, &j.RowsCopied, &j.RowsEstimated, &j.LagSeconds, &j.LagAge)
	return j, err
}

// ReadJob returns the job's record, or nil when the source has none.
func ReadJob(ctx context.Context, q Querier, id string) (*Job, error) {
	if ok, err := exists(ctx, q, "jobs"); err != nil || !ok {
		return nil, err
	}
	j, err := scanJob(q.QueryRow(ctx, `SELECT `+jobColumns+` FROM promoted.jobs WHERE job_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) || undefined(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the move's record: %w", err)
	}
	return j, nil
}

// Jobs returns every move recorded on the source, newest first.
func Jobs(ctx context.Context, q Querier) ([]*Job, error) {
	if ok, err := exists(ctx, q, "jobs"); err != nil || !ok {
		return nil, err
	}
	rows, err := q.Query(ctx, `SELECT `+jobColumns+` FROM promoted.jobs ORDER BY started_at DESC, job_id`)
	if err != nil {
		if undefined(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read the moves' records: %w", err)
	}
	defer rows.Close()
	var out []*Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("read the moves' records: %w", err)
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// SetJobPhase records the job's phase and outcome (and the blocked time
// of a cutover, when known).
func SetJobPhase(ctx context.Context, q Querier, id, phase, outcome string, blockedMS *int64) error {
	_, err := q.Exec(ctx, `UPDATE promoted.jobs SET phase = $2, outcome = nullif($3, ''), blocked_ms = coalesce($4, blocked_ms), updated_at = now() WHERE job_id = $1`,
		id, phase, outcome, blockedMS)
	if err != nil && !undefined(err) {
		return fmt.Errorf("record the move's phase: %w", err)
	}
	return nil
}

// SetReverse records (or, with "", forgets) where the promotion's rollback
// slot starts.
func SetReverse(ctx context.Context, q Querier, id, lsn string) error {
	if _, err := q.Exec(ctx, `UPDATE promoted.jobs SET reverse_lsn = nullif($2, '')::pg_lsn, updated_at = now() WHERE job_id = $1`, id, lsn); err != nil {
		return fmt.Errorf("record the rollback slot: %w", err)
	}
	return nil
}

// SetJobRows records the copy's progress (rows copied, and the planner's
// estimate of the tenant's rows) in the move's record, for status.
func SetJobRows(ctx context.Context, q Querier, id string, copied, estimated int64) error {
	if _, err := q.Exec(ctx, `UPDATE promoted.jobs SET rows_copied = $2, rows_estimated = $3 WHERE job_id = $1`, id, copied, estimated); err != nil {
		return fmt.Errorf("record the copy's progress on the source: %w", err)
	}
	return nil
}

// SetJobLag records the catch-up's lag in time in the move's record, for
// status, stamped with the source's clock.
func SetJobLag(ctx context.Context, q Querier, id string, seconds float64) error {
	if _, err := q.Exec(ctx, `UPDATE promoted.jobs SET lag_seconds = $2, lag_at = now() WHERE job_id = $1`, id, seconds); err != nil {
		return fmt.Errorf("record the catch-up's lag on the source: %w", err)
	}
	return nil
}
