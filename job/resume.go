package job

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
)

// Resuming a move: checking a rerun against the record, verifying a
// copied move, and clearing what an interrupted copy left.

// sameMove refuses a run whose flags contradict the recorded move: the
// record says what the move copies and where, and a second set of tables
// or another target would mix two moves under one slot and fence.
func (j *Job) sameMove(rec *state.Job, prog *state.Progress) error {
	again := fmt.Sprintf("rerun with the flags the move was started with, or run `promoted cancel --source ... --tenant %s --schema %s` first", j.cfg.Tenant, j.cfg.Schema)
	if rec.TenantColumn != "" && rec.TenantColumn != j.cfg.TenantColumn {
		return fmt.Errorf("the move of tenant %s was started with --tenant-column %s, not %s: %s", rec.Tenant, rec.TenantColumn, j.cfg.TenantColumn, again)
	}
	if len(rec.Tables) > 0 && !slices.Equal(sorted(rec.Tables), sorted(j.plan.TableNames())) {
		return fmt.Errorf("the move of tenant %s was started with --tables %s, not %s: %s", rec.Tenant, strings.Join(rec.Tables, ","), strings.Join(j.plan.TableNames(), ","), again)
	}
	if rec.TargetSchema != "" && rec.TargetSchema != j.cfg.TargetSchema {
		return fmt.Errorf("the move of tenant %s copies into schema %s, not %s: %s", rec.Tenant, rec.TargetSchema, j.cfg.TargetSchema, again)
	}
	if prog == nil && rec.Phase != state.PhasePrepare && rec.Phase != state.PhaseFailed {
		return fmt.Errorf("the move of tenant %s copies into %s, and %s holds no record of it: %s", rec.Tenant, rec.Target, db.Redact(j.cfg.TargetDSN), again)
	}
	return nil
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// runVerify resumes a copied move just long enough to verify it.
func (j *Job) runVerify(ctx context.Context, rec *state.Job, prog *state.Progress) error {
	if rec != nil {
		switch rec.Phase {
		case state.PhaseFlipped, state.PhaseDone, state.PhaseCleaned:
			return fmt.Errorf("tenant %s was promoted (the catalog flipped), so the target is authoritative and the source is fenced: there is no live replica to verify; run `promoted cleanup --source ... --tenant %s` to delete the old rows", rec.Tenant, j.cfg.Tenant)
		case state.PhaseCancelled:
			return fmt.Errorf("the move of tenant %s was cancelled, so there is no live replica to verify: start it again with `promoted replicate` or `promoted promote`", rec.Tenant)
		}
	}
	if prog == nil || prog.Phase != state.ProgressCatchup {
		return fmt.Errorf("no copied move of tenant %s into %s is recorded on the target, so there is nothing to verify: run replicate or promote first", j.cfg.Tenant, db.Redact(j.cfg.TargetDSN))
	}
	if prog.TargetSchema != j.cfg.TargetSchema {
		return fmt.Errorf("the target records this move into schema %q, not %q: pass --target-schema %s", prog.TargetSchema, j.cfg.TargetSchema, prog.TargetSchema)
	}
	return j.followAfter(ctx, nil)
}

// restart removes what an interrupted copy or a cancelled move left: the
// slot and publication on the source; on the target, every object the
// move created (its foreign keys with them, so a rerun never trips over a
// key built before the crash), and the tenant's rows in tables that were
// there before.
func (j *Job) restart(ctx context.Context, src, dst *pgx.Conn) error {
	if err := snapshot.Drop(ctx, src, j.names); err != nil {
		return err
	}
	if err := dropCreated(ctx, dst, j.ID, j.plan.Tables, j.log); err != nil {
		return err
	}
	return state.DeleteProgress(ctx, dst, j.ID)
}
