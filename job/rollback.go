package job

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
)

// reverseNames are the rollback slot and publication a promotion leaves on
// its target: those of the demotion that would take the tenant back from
// there, so `rollback` resumes that demotion's stream.
func reverseNames(ctx context.Context, dst *pgx.Conn, schema, tenant string) (string, snapshot.Names, error) {
	var dbName string
	if err := dst.QueryRow(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		return "", snapshot.Names{}, fmt.Errorf("identify the target database: %w", err)
	}
	id := DemoteID(dbName, schema, tenant)
	return id, snapshot.NamesFor(id), nil
}

// reversed are the moved tables seen from the target: the rollback
// stream's source. They are published without a row filter (the target
// holds only the tenant), so the rollback filters them itself.
func reversed(tables []*promoted.Table) []*promoted.Table {
	out := make([]*promoted.Table, len(tables))
	for i, t := range tables {
		r := *t
		r.Schema, r.Name, r.TargetSchema, r.TargetName = t.TargetSchema, t.TargetName, t.Schema, t.Name
		r.ServerFilter = false
		out[i] = &r
	}
	return out
}

// createReverse runs just before the fence: it creates the rollback
// publication and slot on the target. Creating a slot waits for the
// target's running transactions and takes tens of milliseconds, so it is
// kept out of the fence; the slot then also sees the apply's last
// writes, which markReverse skips.
func (j *Job) createReverse(ctx context.Context) error {
	start := time.Now()
	dst, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted-reverse")
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())
	_, names, err := reverseNames(ctx, dst, j.cfg.TargetSchema, j.plan.Tenant())
	if err != nil {
		return err
	}
	// An earlier attempt that did not flip may have left them.
	if err := snapshot.Drop(ctx, dst, names); err != nil {
		return err
	}
	if err := snapshot.CreatePublication(ctx, dst, names.Publication, reversed(j.plan.Tables)); err != nil {
		return fmt.Errorf("rollback publication on the target: %w", err)
	}
	repl, err := snapshot.ConnectReplication(ctx, j.cfg.TargetDSN, j.cfg.SlotTimeout)
	if err != nil {
		return err
	}
	defer repl.Close(context.Background())
	slot, err := snapshot.CreateSlot(ctx, repl, names.Slot)
	if err != nil {
		return fmt.Errorf("rollback slot on the target (--no-rollback skips it): %w", err)
	}
	j.log.Info("rollback slot created on the target", "stage", "cutover", "slot", names.Slot, "consistent_point", slot.ConsistentPoint.String(),
		"ms", time.Since(start).Milliseconds())
	return nil
}

// markReverse runs under the fence, after the drain and every check, just
// before the flip: it records the target's current WAL position in the
// promotion's record as where the rollback stream starts. Every write of
// the apply has committed before it, and nothing of the tenant is written
// on the target after it but by the tenant itself at its new place (its
// writes are fenced on the source, and the flip has not sent them there
// yet), so a rollback streams exactly the tenant's writes since the flip.
func (j *Job) markReverse(ctx context.Context, src, dst *pgx.Conn) error {
	var at string
	if err := dst.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&at); err != nil {
		return fmt.Errorf("read the target's WAL position for the rollback slot: %w", err)
	}
	return state.SetReverse(ctx, src, j.ID, at)
}

// dropReverse removes the rollback slot after a cutover that did not
// flip, so it pins no WAL on the target. When the catalog cannot say
// whether the flip happened, the slot stays: a rerun settles it.
func (j *Job) dropReverse(cat *state.Catalog) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flipped, _, err := cat.Flipped(ctx, j.ID)
	if err != nil || flipped {
		return
	}
	dst, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted-reverse")
	if err != nil {
		j.log.Warn("drop the rollback slot after the failed cutover (the next attempt drops it)", "err", err)
		return
	}
	defer dst.Close(context.Background())
	_, names, err := reverseNames(ctx, dst, j.cfg.TargetSchema, j.plan.Tenant())
	if err == nil {
		err = snapshot.Drop(ctx, dst, names)
	}
	if err != nil {
		j.log.Warn("drop the rollback slot after the failed cutover (the next attempt drops it)", "err", err)
	}
}

// PrepareRollback turns `rollback --source POOLED --target DEDICATED` into
// the demotion that undoes the promotion: from the dedicated side into the
// pooled rows the promotion left, starting at the rollback slot. It reads
// the promotion's record, refuses a promotion that cannot be rolled back
// (not flipped, cleaned up, made with --no-rollback, or its slot gone),
// and records the demotion as already copied, so Run only streams and
// cuts over. cfg is the command line's: source the pooled database,
// target the dedicated one.
func PrepareRollback(ctx context.Context, cfg Config) (Config, error) {
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	pooled, err := db.Open(ctx, db.Source, cfg.SourceDSN, "promoted")
	if err != nil {
		return cfg, err
	}
	defer pooled.Close(context.Background())
	rec, err := findMove(ctx, pooled, &EndConfig{Tenant: cfg.Tenant, Schema: cfg.Schema})
	if err != nil {
		return cfg, err
	}
	if rec.Kind != state.KindPromote {
		return cfg, fmt.Errorf("the move of tenant %s recorded here is a %s, not a promotion: only a promotion is rolled back", rec.Tenant, rec.Kind)
	}
	dedicated, err := db.Open(ctx, db.Target, cfg.TargetDSN, "promoted")
	if err != nil {
		return cfg, err
	}
	defer dedicated.Close(context.Background())
	id, names, err := reverseNames(ctx, dedicated, rec.TargetSchema, rec.Tenant)
	if err != nil {
		return cfg, err
	}
	rc := cfg
	rc.SourceDSN, rc.TargetDSN = cfg.TargetDSN, cfg.SourceDSN
	rc.Schema, rc.TargetSchema, rc.Tables, rc.TenantColumn, rc.Tenant = rec.TargetSchema, rec.Schema, rec.Tables, rec.TenantColumn, rec.Tenant
	rc.Promote, rc.Demote, rc.Rollback, rc.PromoteID = true, true, true, rec.ID
	if rc.Cutover.CatalogDSN == "" {
		rc.Cutover.CatalogDSN = cfg.SourceDSN
	}
	rc.Cutover.Location = ""
	if err := rc.Validate(); err != nil {
		return cfg, err
	}
	cat := &state.Catalog{DSN: rc.Cutover.CatalogDSN}
	if done, _, err := cat.Flipped(ctx, id); err != nil || done {
		return rc, err // flipped back already: Run finishes what is left
	}
	wasPromoted, _, err := cat.Flipped(ctx, rec.ID)
	if err != nil {
		return cfg, err
	}
	demote := fmt.Sprintf("take the tenant back with `promoted demote --source %s --target %s --tenant %s`", db.Redact(cfg.TargetDSN), db.Redact(cfg.SourceDSN), rec.Tenant)
	switch {
	case rec.Phase == state.PhaseRolledBack:
		return cfg, fmt.Errorf("the promotion of tenant %s was rolled back already: its pooled rows are authoritative", rec.Tenant)
	case rec.Phase == state.PhaseCleaned:
		return cfg, fmt.Errorf("the promotion of tenant %s was cleaned up, which ends the way back by rollback (its old rows are gone): %s", rec.Tenant, demote)
	case !wasPromoted:
		return cfg, fmt.Errorf("tenant %s has not been promoted (the catalog did not flip), so there is nothing to roll back: `promoted cancel` ends the move", rec.Tenant)
	case rec.ReverseLSN == "":
		return cfg, fmt.Errorf("the promotion of tenant %s kept no rollback slot (--no-rollback, or it was dropped past --max-retained-wal): %s", rec.Tenant, demote)
	}
	slot, err := snapshot.ReadSlot(ctx, dedicated, names.Slot)
	if err != nil {
		return cfg, err
	}
	if !slot.Exists || slot.WALStatus == "lost" {
		return cfg, fmt.Errorf("the rollback slot %s of tenant %s is gone from the dedicated database, so its writes there since the promotion cannot be streamed back: %s", names.Slot, rec.Tenant, demote)
	}
	// Nothing watches the slot between commands (max_slot_wal_keep_size
	// on the dedicated side is the backstop): past the budget it goes now.
	var retained int64
	if err := dedicated.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = $1`, names.Slot).Scan(&retained); err != nil {
		return cfg, fmt.Errorf("read the rollback slot: %w", err)
	}
	if retained > int64(rc.MaxRetainedWAL) {
		if err := snapshot.Drop(ctx, dedicated, names); err != nil {
			return cfg, err
		}
		if err := state.SetReverse(ctx, pooled, rec.ID, ""); err != nil {
			return cfg, err
		}
		return cfg, fmt.Errorf("the rollback slot of tenant %s held %d MB of WAL on the dedicated side, past --max-retained-wal: it was dropped, so the way back is now a full demotion: %s", rec.Tenant, retained>>20, demote)
	}
	from, err := promoted.ParseLSN(rec.ReverseLSN)
	if err != nil {
		return cfg, fmt.Errorf("the promotion's record: rollback slot position %q: %w", rec.ReverseLSN, err)
	}
	// The pooled rows hold the tenant as it was at the flip: the demotion
	// is copied already, up to the slot's start.
	if prog, err := state.ReadProgress(ctx, pooled, id); err != nil {
		return cfg, err
	} else if prog == nil {
		if err := state.WriteProgress(ctx, pooled, &state.Progress{JobID: id, Tenant: rec.Tenant, SourceSchema: rec.TargetSchema, TargetSchema: rec.Schema,
			Slot: names.Slot, Publication: names.Publication, Phase: state.ProgressCatchup, ConsistentPoint: from, Applied: from}); err != nil {
			return cfg, err
		}
	}
	if r, err := state.ReadJob(ctx, dedicated, id); err != nil {
		return cfg, err
	} else if r == nil || !r.Active() {
		if err := state.RecordJob(ctx, dedicated, &state.Job{ID: id, Tenant: rec.Tenant, Schema: rec.TargetSchema, Kind: state.KindRollback,
			Target: db.Redact(cfg.SourceDSN), TargetSchema: rec.Schema, TenantColumn: rec.TenantColumn, TenantType: rec.TenantType,
			Tables: rec.Tables, Phase: state.PhaseCatchup}); err != nil {
			return cfg, err
		}
	}
	return rc, nil
}

// finishRollback, once the catalog flipped back, lets the tenant write its
// pooled rows again and retires the promotion: its fence disarmed, its
// rollback slot forgotten, its flip forgotten (so promoting the tenant
// again is a new move), its record marked rolled back (so its cleanup can
// never delete the rows that are authoritative again), and its fence
// triggers removed where no other move needs them. Each step may run
// again after a crash.
func (j *Job) finishRollback(ctx context.Context) error {
	pooled, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted")
	if err != nil {
		return err
	}
	defer pooled.Close(context.Background())
	schema, tenant := j.cfg.TargetSchema, j.plan.Tenant()
	if err := state.DisarmFence(ctx, pooled, schema, tenant, j.cfg.PromoteID); err != nil {
		return err
	}
	if err := state.SetReverse(ctx, pooled, j.cfg.PromoteID, ""); err != nil {
		return err
	}
	cat, err := j.catalog(ctx)
	if err != nil {
		return err
	}
	err = state.ForgetFlip(ctx, cat.Conn, j.cfg.PromoteID)
	cat.Conn.Close(context.Background())
	if err != nil {
		return err
	}
	if err := state.SetJobPhase(ctx, pooled, j.cfg.PromoteID, state.PhaseRolledBack, "rolled back", nil); err != nil {
		return err
	}
	return cutover.RemoveFence(ctx, pooled, schema, j.cfg.PromoteID, tenant)
}
