package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/stream"
	"github.com/promoted/promoted/verify"
)

// Hooks let tests inject faults and observe the irreversible steps.
type Hooks struct {
	// AfterChunk runs after each copied chunk is committed on the target.
	AfterChunk func(table string)
	// Streaming runs once the catch-up stream starts.
	Streaming func()
	// BeforeCutover runs when the catch-up is streaming, before the job
	// waits for the lag to allow the cutover (the demo lets the replica
	// run live for a while here).
	BeforeCutover func(ctx context.Context)
	// Cutover runs at the cutover's irreversible steps.
	Cutover cutover.Hooks
}

// Job is one tenant move.
type Job struct {
	cfg   Config
	log   *slog.Logger
	Hooks Hooks

	// ID names the job; set once Run has identified the source database.
	ID    string
	names snapshot.Names
	plan  *schema.Plan

	phase  atomic.Value // string
	mu     sync.Mutex
	copier *snapshot.Copier
	sink   *apply.Postgres
	stream *stream.Stream
	m      *metrics

	src  *pgx.Conn // the coordinator's source session, while Run runs
	gate *gate
	// verified is the result of a verify-only run; preVerified of the
	// cutover's full comparison before the fence.
	verified, preVerified *verify.Result
	copied                map[*promoted.Table]int64
	summary               *Summary
	entry                 cutover.Entry
}

// New checks the configuration; nothing is touched until Run.
func New(cfg Config, log *slog.Logger) (*Job, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	j := &Job{cfg: cfg, log: log.With("tenant", cfg.Tenant), m: newMetrics(cfg.Tenant)}
	j.phase.Store("plan")
	return j, nil
}

// Phase is the current phase: plan, prepare, snapshot, catchup.
func (j *Job) Phase() string { return j.phase.Load().(string) }

func (j *Job) setPhase(p string) {
	j.phase.Store(p)
	j.log.Info("phase", "stage", p)
}

// Tables are the planned tables (after Run has planned).
func (j *Job) Tables() []*promoted.Table {
	if j.plan == nil {
		return nil
	}
	return j.plan.Tables
}

// Applied is the end LSN of the last source transaction the target holds.
func (j *Job) Applied() promoted.LSN {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.sink == nil {
		return 0
	}
	return j.sink.Durable()
}

// Lag is how far, in WAL bytes, the target is behind what the source has
// reported.
func (j *Job) Lag() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.sink == nil || j.stream == nil {
		return 0
	}
	end, applied := j.stream.ServerWALEnd(), j.sink.Durable()
	if end <= applied {
		return 0
	}
	return int64(end - applied)
}

// RowsCopied is the snapshot's running row count.
func (j *Job) RowsCopied() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.copier == nil {
		return 0
	}
	return j.copier.RowsCopied()
}

// Run plans and checks the move, prepares the target, takes the snapshot
// (or resumes after a crash), and then streams the tenant's changes until
// ctx ends. A clean stop (ctx cancelled) returns nil with everything
// received either committed on the target and acknowledged, or neither.
func (j *Job) Run(ctx context.Context) error {
	src, err := connect(ctx, j.cfg.SourceDSN, "source", "promoted")
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	j.src = src
	dst, err := connect(ctx, j.cfg.TargetDSN, "target", "promoted")
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())

	var db string
	if err := src.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		return fmt.Errorf("identify source database: %w", err)
	}
	j.ID = JobID(db, j.cfg.Schema, j.cfg.Tenant)
	j.names = snapshot.NamesFor(j.ID)
	j.log = j.log.With("job", j.ID)
	lease, err := acquireLease(ctx, j.cfg.SourceDSN, j.ID, j.cfg.Tenant)
	if err != nil {
		return err
	}
	defer lease.release()

	// Plan and preflight: nothing is created on either side before these
	// pass.
	if err := preflight(ctx, src, &j.cfg, j.names.Slot); err != nil {
		return err
	}
	same, err := sameDatabase(ctx, src, dst)
	if err != nil {
		return err
	}
	if same && j.cfg.TargetSchema == j.cfg.Schema {
		return fmt.Errorf("target and source are the same database and --target-schema is %q, the source schema: pass --target-schema with a new schema name", j.cfg.TargetSchema)
	}
	plan, err := schema.Load(ctx, src, schema.Config{Schema: j.cfg.Schema, TargetSchema: j.cfg.TargetSchema,
		TenantColumn: j.cfg.TenantColumn, Tables: j.cfg.Tables, Tenant: promoted.Tenant(j.cfg.Tenant), SameDatabase: same})
	if err != nil {
		return err
	}
	j.plan = plan
	if err := checkOwnership(ctx, src, plan.Tables); err != nil {
		return err
	}
	prog, err := apply.ReadProgress(ctx, dst, j.ID)
	if err != nil {
		return err
	}
	if prog == nil {
		if err := checkTarget(ctx, dst, plan.Tables); err != nil {
			return err
		}
	}
	// Logged only once every refusal has passed, so a refusal is the one
	// line on stderr.
	for _, n := range plan.Notes {
		j.log.Warn(n, "stage", "plan")
	}
	for _, t := range plan.Tables {
		mode := "server row filter"
		if !t.ServerFilter {
			mode = "filtered by promoted (replica identity lacks " + j.cfg.TenantColumn + ")"
		}
		j.log.Info("table", "stage", "plan", "table", t.String(), "estimated_rows", t.EstimatedRows, "filter", mode)
	}
	if j.cfg.FixReplicaIdentity {
		if err := fixReplicaIdentity(ctx, src, plan.Tables); err != nil {
			return err
		}
	}

	if j.cfg.Promote {
		done, err := j.preparePromote(ctx, src)
		if err != nil || done {
			return err
		}
	}

	if j.cfg.VerifyOnly && (prog == nil || prog.Phase != apply.PhaseCatchup) {
		return fmt.Errorf("no copied move of tenant %s into %s is recorded on the target, so there is nothing to verify: run replicate or promote first", j.cfg.Tenant, Redact(j.cfg.TargetDSN))
	}
	if prog != nil && prog.Phase == apply.PhaseCatchup {
		if prog.TargetSchema != j.cfg.TargetSchema {
			return fmt.Errorf("the target records this move into schema %q, not %q: pass --target-schema %s, or cancel the move", prog.TargetSchema, j.cfg.TargetSchema, prog.TargetSchema)
		}
		return j.resume(ctx, src, prog)
	}
	if prog != nil {
		// A crash during the copy: the exported snapshot died with the
		// daemon and cannot be recreated, so the copy starts over with a
		// new slot (hazards.md 1.1, 1.7).
		j.log.Warn("an earlier run stopped during the snapshot: starting the copy again", "stage", "prepare")
		if err := j.restart(ctx, src, dst); err != nil {
			return err
		}
	}
	return j.start(ctx, src, dst)
}

// restart removes what an interrupted snapshot left: the slot and
// publication on the source, the tenant's rows on the target.
func (j *Job) restart(ctx context.Context, src, dst *pgx.Conn) error {
	if err := snapshot.Drop(ctx, src, j.names); err != nil {
		return err
	}
	for _, t := range j.plan.Tables {
		q := fmt.Sprintf("DELETE FROM %s WHERE %s", pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize(), snapshot.TenantPredicate(t))
		if _, err := dst.Exec(ctx, "DO $$ BEGIN IF to_regclass("+snapshot.QuoteLiteral(pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize())+") IS NOT NULL THEN EXECUTE "+snapshot.QuoteLiteral(q)+"; END IF; END $$"); err != nil {
			return fmt.Errorf("clear %s.%s on the target: %w", t.TargetSchema, t.TargetName, err)
		}
	}
	return apply.DeleteProgress(ctx, dst, j.ID)
}

// start prepares the target, creates the publication and slot, copies the
// snapshot, then streams.
func (j *Job) start(ctx context.Context, src, dst *pgx.Conn) error {
	j.setPhase("prepare")
	if err := j.runDDL(ctx, dst, j.plan.PreLoad()); err != nil {
		return err
	}
	if err := apply.EnsureProgressTable(ctx, dst); err != nil {
		return err
	}
	prog := &apply.Progress{JobID: j.ID, Tenant: j.cfg.Tenant, SourceSchema: j.cfg.Schema, TargetSchema: j.cfg.TargetSchema,
		Slot: j.names.Slot, Publication: j.names.Publication, Phase: apply.PhaseSnapshot}
	if err := apply.WriteProgress(ctx, dst, prog); err != nil {
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
	if err := snapshot.CreatePublication(ctx, src, j.names.Publication, j.plan.Tables); err != nil {
		return err
	}
	repl, err := snapshot.ConnectReplication(ctx, j.cfg.SourceDSN, j.cfg.SlotTimeout)
	if err != nil {
		return err
	}
	defer repl.Close(context.Background())
	slot, err := snapshot.CreateSlot(ctx, repl, j.names.Slot)
	if err != nil {
		return err
	}
	j.setPhase("snapshot")
	j.log.Info("slot created", "stage", "snapshot", "slot", slot.Name, "consistent_point", slot.ConsistentPoint.String())
	prog.ConsistentPoint = slot.ConsistentPoint
	if err := apply.WriteProgress(ctx, dst, prog); err != nil {
		return err
	}
	copier := snapshot.NewCopier(j.cfg.Copy, j.cfg.SourceDSN, j.cfg.TargetDSN, slot.SnapshotName, j.plan.Tables, j.log.With("stage", "snapshot"))
	copier.AfterChunk = j.Hooks.AfterChunk
	j.mu.Lock()
	j.copier = copier
	j.mu.Unlock()
	start := time.Now()
	stopProgress := j.reportProgress(ctx)
	results, err := copier.Run(ctx)
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
	// Keys, indexes and foreign keys after the load: building them once is
	// far cheaper than maintaining them row by row.
	if err := j.runDDL(ctx, dst, j.plan.PostLoad()); err != nil {
		return err
	}
	// Statistics and a visibility map for the freshly loaded tables: the
	// tenant's queries get plans at once, and the cutover's counts under
	// the fence are index-only scans instead of heap walks.
	for _, t := range j.plan.Tables {
		if _, err := dst.Exec(ctx, "VACUUM (ANALYZE) "+pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()); err != nil {
			return fmt.Errorf("vacuum %s.%s on the target: %w", t.TargetSchema, t.TargetName, err)
		}
	}
	prog.Phase, prog.Applied, prog.RowsCopied = apply.PhaseCatchup, slot.ConsistentPoint, rows
	if err := apply.WriteProgress(ctx, dst, prog); err != nil {
		return err
	}
	ok = true
	return j.catchup(ctx, repl, slot.ConsistentPoint)
}

// resume continues a job whose copy finished: the slot must still be
// there, and must not be ahead of the target.
func (j *Job) resume(ctx context.Context, src *pgx.Conn, prog *apply.Progress) error {
	state, err := snapshot.ReadSlot(ctx, src, j.names.Slot)
	if err != nil {
		return err
	}
	if !state.Exists {
		return fmt.Errorf("the move's replication slot %s is gone from the source, so changes since %s cannot be streamed: run `promoted cancel` and start the move again", j.names.Slot, prog.Applied)
	}
	if state.WALStatus == "lost" {
		return fmt.Errorf("the move's replication slot %s lost WAL it needed (max_slot_wal_keep_size): run `promoted cancel` and start the move again", j.names.Slot)
	}
	if state.ConfirmedFlush > prog.Applied {
		return fmt.Errorf("the slot %s was acknowledged up to %s but the target holds changes only up to %s, so changes in between would be lost (was the slot recreated?): run `promoted cancel` and start the move again", j.names.Slot, state.ConfirmedFlush, prog.Applied)
	}
	if state.Active {
		// A killed daemon's walsender may linger until it notices.
		if _, err := src.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1`, j.names.Slot); err != nil {
			return fmt.Errorf("end the slot's old walsender: %w", err)
		}
	}
	j.log.Info("resuming", "stage", "catchup", "from", prog.Applied.String())
	var repl *pgconn.PgConn
	for attempt := 0; ; attempt++ {
		repl, err = snapshot.ConnectReplication(ctx, j.cfg.SourceDSN, j.cfg.SlotTimeout)
		if err != nil {
			return err
		}
		err = j.catchup(ctx, repl, prog.Applied)
		repl.Close(context.Background())
		var pgErr *pgconn.PgError
		// 55006: the old walsender still holds the slot for a moment.
		if errors.As(err, &pgErr) && pgErr.Code == "55006" && attempt < 50 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		return err
	}
}

func (j *Job) catchup(ctx context.Context, repl *pgconn.PgConn, from promoted.LSN) error {
	applyConn, err := apply.Connect(ctx, j.cfg.TargetDSN)
	if err != nil {
		return err
	}
	fetcher := snapshot.NewFetcher(j.cfg.SourceDSN)
	defer fetcher.Close(context.Background())
	sink := apply.NewPostgres(j.cfg.Apply, applyConn, j.ID, from, fetcher, j.cfg.Tenant, j.log.With("stage", "apply"))
	defer sink.Close(context.Background())
	gated := newGate(sink)
	scfg := j.cfg.Stream
	scfg.Slot, scfg.Publication = j.names.Slot, j.names.Publication
	st, err := stream.New(scfg, repl, j.plan.Tables, j.log.With("stage", "stream"))
	if err != nil {
		return err
	}
	j.mu.Lock()
	j.sink, j.stream, j.gate = sink, st, gated
	j.mu.Unlock()
	j.setPhase("catchup")
	if j.Hooks.Streaming != nil {
		j.Hooks.Streaming()
	}
	g, gctx := errgroup.WithContext(ctx)
	stop := j.reportProgress(gctx)
	defer stop()
	g.Go(func() error { return st.Run(gctx, from, gated) })
	if j.cfg.Promote {
		g.Go(func() error { return j.cutover(gctx, st, sink) })
	}
	if j.cfg.VerifyOnly {
		g.Go(func() error { return j.verifyOnce(gctx) })
	}
	err = g.Wait()
	if errors.Is(err, errVerified) {
		return nil
	}
	if errors.Is(err, errFlipped) {
		return j.finish(ctx)
	}
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
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

// reportProgress logs progress and updates gauges until stopped.
func (j *Job) reportProgress(ctx context.Context) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(j.cfg.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			switch j.Phase() {
			case "snapshot":
				j.log.Info("progress", "stage", "snapshot", "rows_copied", j.RowsCopied())
			case "catchup":
				lag := j.Lag()
				j.m.lag.Set(float64(lag))
				j.log.Info("progress", "stage", "catchup", "applied_lsn", j.Applied().String(), "lag_bytes", lag)
			}
		}
	}()
	return func() { cancel(); <-done }
}
