package job

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
)

// The copy: preparing the target, the slot with its exported snapshot,
// and the snapshot copy itself.

// start prepares the target, creates the publication and slot, copies the
// snapshot, then streams.
func (j *Job) start(ctx context.Context, src, dst *pgx.Conn) error {
	j.setPhase("prepare")
	prog := &state.Progress{JobID: j.ID, Tenant: j.plan.Tenant(), SourceSchema: j.cfg.Schema, TargetSchema: j.cfg.TargetSchema,
		Slot: j.names.Slot, Publication: j.names.Publication, Phase: state.ProgressSnapshot}
	if err := state.WriteProgress(ctx, dst, prog); err != nil {
		return err
	}
	if err := j.preLoad(ctx, dst); err != nil {
		return err
	}
	// From here on a failure drops what was made on the source, so no slot
	// pins WAL for a move that is not running.
	ok := false
	defer func() {
		if !ok {
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := snapshot.Drop(cctx, src, j.names); err != nil {
				j.log.Error("drop slot and publication after failure", "err", err)
			}
		}
	}()
	if j.cfg.Demote {
		// A promotion's rollback slot carries this demotion's names (a
		// rollback is this demotion, resumed): starting the demotion
		// afresh replaces it.
		var left bool
		if err := src.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, j.names.Slot).Scan(&left); err != nil {
			return fmt.Errorf("check for a rollback slot: %w", err)
		}
		if left {
			j.log.Warn("dropping the rollback slot an earlier promotion left here: this demotion replaces the rollback", "stage", "prepare", "slot", j.names.Slot)
			if err := snapshot.Drop(ctx, src, j.names); err != nil {
				return err
			}
		}
	}
	// The copy's check needs every row written after the snapshot
	// recorded: the recording starts before the slot (and stops when run
	// returns).
	tracked := false
	if j.wantCopyCheck() {
		var err error
		if tracked, err = j.track(ctx, src); err != nil {
			return err
		}
	}
	repl, slot, err := j.createSlot(ctx, src)
	if err != nil {
		return err
	}
	defer repl.Close(context.Background())
	j.log.Info("slot created", "stage", "snapshot", "slot", slot.Name, "consistent_point", slot.ConsistentPoint.String())
	prog.ConsistentPoint = slot.ConsistentPoint
	if err := state.WriteProgress(ctx, dst, prog); err != nil {
		return err
	}
	copier := snapshot.NewCopier(j.cfg.Copy, j.cfg.SourceDSN, j.cfg.TargetDSN, slot.SnapshotName, j.plan.Tables, j.log.With("stage", "snapshot"))
	copier.AfterChunk = j.Hooks.AfterChunk
	j.mu.Lock()
	j.copier = copier
	j.mu.Unlock()
	start := time.Now()
	stopProgress := j.reportProgress(ctx)
	cg, cctx := errgroup.WithContext(ctx)
	wctx, stopWatch := context.WithCancel(cctx)
	var results map[*promoted.Table]*snapshot.TableResult
	cg.Go(func() error {
		defer stopWatch()
		var err error
		results, err = copier.Run(cctx)
		return err
	})
	cg.Go(func() error { return j.watchSlot(wctx, j.watchInterval()) })
	err = j.budgetErr(cg.Wait())
	stopProgress()
	if err != nil {
		return err
	}
	var rows, bytes int64
	for _, t := range j.plan.Tables {
		r := results[t]
		if j.copied == nil {
			j.copied = map[*promoted.Table]int64{}
		}
		j.copied[t] = r.Rows
		rows += r.Rows
		bytes += r.Bytes
		j.log.Info("copied", "stage", "snapshot", "table", t.String(), "rows", r.Rows, "bytes", r.Bytes, "chunks", r.Chunks)
	}
	secs := time.Since(start).Seconds()
	j.log.Info("snapshot copied", "stage", "snapshot", "rows", rows, "bytes", bytes, "seconds", fmt.Sprintf("%.2f", secs),
		"rows_per_second", int64(float64(rows)/secs), "mb_per_second", fmt.Sprintf("%.1f", float64(bytes)/secs/1e6))
	j.copySeconds = secs
	// The source's side of the copy's check runs while the target builds
	// its keys; the target's once they are built.
	var totals *sourceTotals
	if tracked {
		totals = j.totalSource(ctx, slot.SnapshotName)
	}
	err = j.buildKeys(ctx, dst)
	if totals != nil {
		if err == nil {
			err = j.checkCopy(ctx, totals, dst)
		}
		totals.close()
	}
	if err != nil {
		return err
	}
	prog.Phase, prog.Applied, prog.RowsCopied = state.ProgressCatchup, slot.ConsistentPoint, rows
	if err := state.WriteProgress(ctx, dst, prog); err != nil {
		return err
	}
	if err := state.SetJobRows(ctx, src, j.ID, rows, j.est.rows.Load()); err != nil {
		return err
	}
	ok = true
	err = j.catchup(ctx, repl, slot.ConsistentPoint)
	if db.Transient(err) && ctx.Err() == nil {
		return j.followAfter(ctx, err)
	}
	return err
}

// buildKeys adds the keys, indexes and foreign keys after the load:
// building them once is far cheaper than maintaining them row by row.
func (j *Job) buildKeys(ctx context.Context, dst *pgx.Conn) error {
	keysStart := time.Now()
	created, err := createdTables(ctx, dst, j.ID)
	if err != nil {
		return err
	}
	if err := j.runDDL(ctx, dst, j.plan.PostLoad(created)); err != nil {
		return err
	}
	if j.Hooks.AfterKeys != nil {
		j.Hooks.AfterKeys()
	}
	// Statistics for the freshly loaded tables, so the tenant's queries
	// get plans at once. Their visibility map is left to autovacuum,
	// which runs after a bulk insert on its own (PostgreSQL 13 and
	// later): a VACUUM here would cost the move a pass over every page.
	for _, t := range j.plan.Tables {
		if !created(t) {
			continue // a table other tenants use is left to autovacuum
		}
		if _, err := dst.Exec(ctx, "ANALYZE "+pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()); err != nil {
			return fmt.Errorf("analyze %s.%s on the target: %w", t.TargetSchema, t.TargetName, err)
		}
	}
	j.log.Info("keys built", "stage", "snapshot", "seconds", fmt.Sprintf("%.2f", time.Since(keysStart).Seconds()))
	return nil
}

// createSlot creates the move's publication and slot, with the exported
// snapshot the copy reads under, and records that the snapshot phase
// began. The replication session must stay open (and idle) while the
// snapshot is read.
func (j *Job) createSlot(ctx context.Context, src *pgx.Conn) (*pgconn.PgConn, *snapshot.Slot, error) {
	if err := snapshot.CreatePublication(ctx, src, j.names.Publication, j.plan.Tables); err != nil {
		return nil, nil, err
	}
	repl, err := snapshot.ConnectReplication(ctx, j.cfg.SourceDSN, j.cfg.SlotTimeout)
	if err != nil {
		return nil, nil, err
	}
	if j.Hooks.BeforeSlot != nil {
		j.Hooks.BeforeSlot()
	}
	slot, err := snapshot.CreateSlot(ctx, repl, j.names.Slot)
	if err == nil {
		// The plan was read before the snapshot: a column changed in
		// between would be missing from the copy, and a replica, which
		// follows added columns from the stream on, would never learn the
		// values rows took before the snapshot. Compared under it.
		var now map[string]string
		if now, err = schema.DefinitionsAt(ctx, src, j.plan.Tables, slot.SnapshotName); err == nil {
			err = j.plan.DriftFrom(now)
		}
	}
	if err == nil {
		j.setPhase("snapshot")
		err = j.recordPhase(ctx, state.PhaseCopy)
	}
	if err != nil {
		repl.Close(context.Background())
		return nil, nil, err
	}
	return repl, slot, nil
}

// createdTables reports which target tables this move created (and may
// therefore alter, index and vacuum).
func createdTables(ctx context.Context, dst *pgx.Conn, jobID string) (func(*promoted.Table) bool, error) {
	list, err := state.CreatedObjects(ctx, dst, jobID)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, c := range list {
		if c.Kind == state.CreatedTable {
			names[c.Name] = true
		}
	}
	return func(t *promoted.Table) bool { return names[pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()] }, nil
}

// preLoad runs the plan's pre-load DDL on the target, recording each
// object it is about to create (and did not find), so a cancel drops
// exactly what this move made.
func (j *Job) preLoad(ctx context.Context, dst *pgx.Conn) error {
	if _, err := dst.Exec(ctx, "SET search_path = "+j.plan.SearchPath()); err != nil {
		return fmt.Errorf("prepare target: %w", err)
	}
	defer dst.Exec(context.Background(), "RESET search_path")
	created, err := state.CreatedObjects(ctx, dst, j.ID)
	if err != nil {
		return err
	}
	ours := map[string]bool{}
	for _, c := range created {
		ours[c.Name] = true
	}
	for _, st := range j.plan.PreLoadSteps() {
		if st.Table != "" && !ours[st.Table] {
			continue // a table that was there before the move is not altered
		}
		if st.Kind != "" && !ours[st.Name] {
			found, err := objectExists(ctx, dst, st.Kind, st.Name)
			if err != nil {
				return err
			}
			if !found {
				if err := state.RecordCreated(ctx, dst, j.ID, state.Created{Kind: st.Kind, Name: st.Name}); err != nil {
					return err
				}
				ours[st.Name] = true
			}
		}
		if _, err := dst.Exec(ctx, st.SQL); err != nil {
			return fmt.Errorf("prepare target: %w (statement: %s)", err, st.SQL)
		}
	}
	return nil
}

func (j *Job) runDDL(ctx context.Context, dst *pgx.Conn, stmts []string) error {
	if _, err := dst.Exec(ctx, "SET search_path = "+j.plan.SearchPath()); err != nil {
		return fmt.Errorf("prepare target: %w", err)
	}
	defer dst.Exec(context.Background(), "RESET search_path")
	for _, s := range stmts {
		if _, err := dst.Exec(ctx, s); err != nil {
			return fmt.Errorf("prepare target: %w (statement: %s)", err, s)
		}
	}
	return nil
}
