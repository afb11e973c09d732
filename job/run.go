package job

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
)

// The steps of run before anything is created: plan, admit, check the
// target, log the plan, record the move. Each refuses with one line; the
// dry run stops after the plan and runs the checks itself, listing every
// refusal.

// planMove reads the plan from the source and names the move. A failed
// preflight of the source is returned as a refusal for a dry run to list,
// and as the error otherwise.
func (j *Job) planMove(ctx context.Context, src, dst *pgx.Conn) (refusals []string, err error) {
	if err := preflight(ctx, src); err != nil {
		if !j.cfg.DryRun {
			return nil, err
		}
		refusals = append(refusals, err.Error())
	}
	var dbName string
	if err := src.QueryRow(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		return nil, fmt.Errorf("identify source database: %w", err)
	}
	same, err := sameDatabase(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	if same && j.cfg.TargetSchema == j.cfg.Schema {
		return nil, fmt.Errorf("target and source are the same database and --target-schema is %q, the source schema: pass --target-schema with a new schema name", j.cfg.TargetSchema)
	}
	var targetTenant map[string]promoted.Column
	if j.cfg.Demote {
		if targetTenant, err = tenantColumns(ctx, dst, j.cfg.TargetSchema, j.cfg.TenantColumn); err != nil {
			return nil, err
		}
	}
	plan, err := schema.Load(ctx, src, schema.Config{Schema: j.cfg.Schema, TargetSchema: j.cfg.TargetSchema,
		TenantColumn: j.cfg.TenantColumn, Tables: j.cfg.Tables, Sequences: j.cfg.Sequences, Tenant: promoted.Tenant(j.cfg.Tenant), SameDatabase: same,
		TargetTenant: targetTenant})
	if err != nil {
		return nil, err
	}
	j.plan = plan
	j.estimate(plan.Tables)
	if j.cfg.Rollback {
		// The rollback slot's publication has no row filter (reversed).
		for _, t := range plan.Tables {
			t.ServerFilter = false
		}
	}
	if j.cfg.Promote && !j.cfg.Demote && len(plan.ReferencedBy) > 0 && !j.cfg.DryRun {
		return nil, fmt.Errorf("foreign key %s, whose table is not moved: after the promotion its rows would point at rows that cleanup deletes; add that table to --tables", plan.ReferencedBy[0])
	}
	// The move is named by the tenant as the source prints it, so 042 and
	// 42 are one move of one tenant.
	j.ID = JobID(dbName, j.cfg.Schema, plan.Tenant())
	if j.cfg.Demote {
		j.ID = DemoteID(dbName, j.cfg.Schema, plan.Tenant())
	}
	j.names = snapshot.NamesFor(j.ID)
	j.log = j.log.With("job", j.ID)
	return refusals, nil
}

// admit checks, under the move's lease, what the roles may do and that a
// move recorded earlier under this id is this one, and returns its records
// on the source and on the target (nil when there are none).
func (j *Job) admit(ctx context.Context, src, dst *pgx.Conn) (*state.Job, *state.Progress, error) {
	if err := checkSlots(ctx, src, j.names.Slot); err != nil {
		return nil, nil, err
	}
	if err := checkOwnership(ctx, src, j.plan.Tables); err != nil {
		return nil, nil, err
	}
	if !j.cfg.VerifyOnly {
		if err := checkStateRights(ctx, src, "source"); err != nil {
			return nil, nil, err
		}
		if j.cfg.Promote && j.cfg.Cutover.CatalogDSN != "" {
			cat, err := db.Open(ctx, db.Catalog, j.cfg.Cutover.CatalogDSN, "promoted")
			if err != nil {
				return nil, nil, err
			}
			err = checkStateRights(ctx, cat, "catalog")
			cat.Close(context.Background())
			if err != nil {
				return nil, nil, err
			}
		}
	}
	rec, err := state.ReadJob(ctx, src, j.ID)
	if err != nil {
		return nil, nil, err
	}
	prog, err := state.ReadProgress(ctx, dst, j.ID)
	if err != nil {
		return nil, nil, err
	}
	if rec != nil && rec.Active() {
		if err := j.sameMove(rec, prog); err != nil {
			return nil, nil, err
		}
	}
	return rec, prog, nil
}

// preflightTarget refuses a target the move cannot use, and, for a move that
// copies, a tenant without rows (unless --allow-empty).
func (j *Job) preflightTarget(ctx context.Context, src, dst *pgx.Conn, fresh bool, prog *state.Progress) error {
	if err := checkTargetRole(ctx, dst, j.cfg.TargetSchema); err != nil {
		return err
	}
	if !fresh {
		return nil
	}
	switch {
	case j.cfg.Demote:
		// Resumed or not: the pooled tables' shape and keys are checked
		// against the tenant's rows before anything is made.
		if err := checkPooled(ctx, src, dst, j.plan, prog != nil); err != nil {
			return err
		}
	case prog == nil:
		if err := checkTarget(ctx, dst, j.plan.Tables); err != nil {
			return err
		}
	}
	if !j.cfg.AllowEmpty {
		return checkNotEmpty(ctx, src, j.plan.Tables)
	}
	return nil
}

// logPlan logs the plan's notes and each table's filter, once every
// refusal has passed, so a refusal is the one line on stderr.
func (j *Job) logPlan(ctx context.Context, src *pgx.Conn) {
	for _, n := range j.plan.Notes {
		if j.cfg.Demote {
			break // they are about target DDL, which a demotion never runs
		}
		j.log.Warn(n, "stage", "plan")
	}
	var keep string
	if err := src.QueryRow(ctx, `SELECT current_setting('max_slot_wal_keep_size')`).Scan(&keep); err == nil && keep == "-1" {
		j.log.Warn("the source has max_slot_wal_keep_size = -1: while promoted runs it drops a slot past --max-retained-wal, but a move left stopped keeps its slot's WAL without limit; set max_slot_wal_keep_size on the source as its own backstop", "stage", "plan")
	}
	for _, t := range j.plan.Tables {
		mode := "server row filter"
		switch {
		case t.Whole():
			mode = "whole table (no " + j.cfg.TenantColumn + " on the source: every row is the tenant's)"
		case !t.ServerFilter:
			mode = "filtered by promoted (replica identity lacks " + j.cfg.TenantColumn + ")"
		}
		j.log.Info("table", "stage", "plan", "table", t.String(), "estimated_rows", t.EstimatedRows, "filter", mode)
	}
}

// recordMove writes the move's record on the source. A move that copies
// records the definitions it copies; a resumed one keeps those its copy
// began with, and stops when the source's have changed since (a replica
// follows columns added and dropped, and goes on from today's).
func (j *Job) recordMove(ctx context.Context, src *pgx.Conn, rec *state.Job, fresh bool) error {
	plan := j.plan
	kind := state.KindReplicate
	switch {
	case j.cfg.Rollback:
		kind = state.KindRollback
	case j.cfg.Demote:
		kind = state.KindDemote
	case j.cfg.Promote:
		kind = state.KindPromote
	}
	record := &state.Job{ID: j.ID, Tenant: plan.Tenant(), Schema: j.cfg.Schema, Kind: kind,
		Target: db.Redact(j.cfg.TargetDSN), TargetSchema: j.cfg.TargetSchema, TenantColumn: j.cfg.TenantColumn,
		TenantType: plan.TenantType(), Tables: plan.TableNames(), Phase: state.PhasePrepare}
	if fresh {
		record.Definitions = plan.Definitions
	} else if rec != nil && rec.Definitions != nil {
		planned := plan.Definitions
		plan.Definitions = rec.Definitions
		if j.follows() {
			if err := plan.ChangedColumns(planned); err != nil {
				return err
			}
			plan.Definitions, record.Definitions = planned, planned
		} else if err := plan.DriftFrom(planned); err != nil {
			return err
		}
	}
	return state.RecordJob(ctx, src, record)
}
