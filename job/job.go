package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/stream"
	"github.com/promoted/promoted/verify"
)

// Hooks let tests inject faults and observe the irreversible steps.
type Hooks struct {
	// AfterChunk runs after each copied chunk is committed on the target.
	AfterChunk func(table string)
	// AfterKeys runs once the target's keys and foreign keys are built,
	// before the copy is recorded as done.
	AfterKeys func()
	// Streaming runs once the catch-up stream starts.
	Streaming func()
	// BeforeCutover runs when the catch-up is streaming, before the job
	// waits for the lag to allow the cutover (the demo lets the replica
	// run live for a while here).
	BeforeCutover func(ctx context.Context)
	// Verified runs after the full verification before the fence, before
	// the re-checks that narrow what the fence must check.
	Verified func()
	// Cutover runs at the cutover's irreversible steps.
	Cutover cutover.Hooks
	// Lose drops the changes it returns true for in the sink, as a
	// broken stream would.
	Lose func(*promoted.Change) bool
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
	// dry is the result of a --dry-run.
	dry *DryRun
	// durable is the Kafka sink's durable position, when the sink is Kafka.
	durable func() promoted.LSN
	m       *metrics

	src  *pgx.Conn // the coordinator's source session, while Run runs
	gate *apply.Gate
	// verifying holds a token while a live verification runs.
	verifying chan struct{}
	lease     *lease
	// overBudget is set when the retained-WAL budget stopped the move.
	overBudget atomic.Pointer[errOverBudget]
	// verified is the result of a verify-only run; preVerified of the
	// cutover's full comparison before the fence.
	verified, preVerified *verify.Result
	// rounds are the re-checks before the fence (converge); epoch is the
	// tracking epoch from which the check under the fence re-compares.
	rounds      []*verify.Result
	epoch       int
	copied      map[*promoted.Table]int64
	copySeconds float64
	summary     *Summary
	entry       state.Entry
	est         estimates

	// FetchWait bounds how long a re-read of a row waits for its source
	// transaction to become visible (0: the fetcher's default).
	FetchWait time.Duration
	// StallAfter is how long the apply may stand still while behind
	// before it is reported as stalled (0: DefaultStallAfter).
	StallAfter time.Duration
}

// watchInterval is how often the slot's retained WAL is read.
func (j *Job) watchInterval() time.Duration {
	return min(j.cfg.ProgressInterval, 5*time.Second)
}

func (j *Job) stallAfter() time.Duration {
	if j.StallAfter > 0 {
		return j.StallAfter
	}
	return DefaultStallAfter
}

// New checks the configuration; nothing is touched until Run.
func New(cfg Config, log *slog.Logger) (*Job, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	j := &Job{cfg: cfg, log: log.With("tenant", cfg.Tenant), m: newMetrics(cfg.Tenant, cfg.MaxRetainedWAL), verifying: make(chan struct{}, 1)}
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
	return j.applied()
}

// applied is Applied with j.mu held: the PostgreSQL sink's durable
// position, or the Kafka sink's.
func (j *Job) applied() promoted.LSN {
	switch {
	case j.sink != nil:
		return j.sink.Durable()
	case j.durable != nil:
		return j.durable()
	}
	return 0
}

// Lag is how far, in WAL bytes, the target is behind what the source has
// reported.
func (j *Job) Lag() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.stream == nil {
		return 0
	}
	end, applied := j.stream.ServerWALEnd(), j.applied()
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

// Run plans and checks the move, records it on the source, prepares the
// target, takes the snapshot (or resumes after a crash), and then streams
// the tenant's changes until ctx ends. A clean stop (ctx cancelled)
// returns nil with everything received either committed on the target and
// acknowledged, or neither.
func (j *Job) Run(ctx context.Context) error {
	run := j.run
	if j.cfg.IsKafka() {
		run = j.runKafka
	}
	err := run(ctx)
	if err != nil && ctx.Err() != nil && stoppedBy(err) {
		// Stopped on purpose before anything was left half-done: the
		// statement the stop cancelled is not a failure.
		return nil
	}
	if err != nil && !j.cfg.DryRun {
		// A dry run's refusal is its answer, not a failed move.
		j.m.failures.Inc()
	}
	return err
}

// stoppedBy reports whether err is the cancellation of a stop: the
// context's, or the server's answer to the cancel request it sent.
func stoppedBy(err error) bool {
	var pgErr *pgconn.PgError
	return errors.Is(err, context.Canceled) || (errors.As(err, &pgErr) && pgErr.Code == "57014")
}

func (j *Job) run(ctx context.Context) error {
	src, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted")
	if err != nil {
		return err
	}
	j.src = src
	// A retry may replace the session and the lease: close whichever is
	// current at the end.
	defer func() { j.src.Close(context.Background()) }()
	dst, err := db.Open(ctx, db.Target, j.cfg.TargetDSN, "promoted")
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())

	// Plan and preflight: nothing is created on either side before these
	// pass.
	var refusals []string
	if err := preflight(ctx, src); err != nil {
		if !j.cfg.DryRun {
			return err
		}
		refusals = append(refusals, err.Error())
	}
	var dbName string
	if err := src.QueryRow(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		return fmt.Errorf("identify source database: %w", err)
	}
	same, err := sameDatabase(ctx, src, dst)
	if err != nil {
		return err
	}
	if same && j.cfg.TargetSchema == j.cfg.Schema {
		return fmt.Errorf("target and source are the same database and --target-schema is %q, the source schema: pass --target-schema with a new schema name", j.cfg.TargetSchema)
	}
	plan, err := schema.Load(ctx, src, schema.Config{Schema: j.cfg.Schema, TargetSchema: j.cfg.TargetSchema,
		TenantColumn: j.cfg.TenantColumn, Tables: j.cfg.Tables, Sequences: j.cfg.Sequences, Tenant: promoted.Tenant(j.cfg.Tenant), SameDatabase: same})
	if err != nil {
		return err
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
		return fmt.Errorf("foreign key %s, whose table is not moved: after the promotion its rows would point at rows that cleanup deletes; add that table to --tables", plan.ReferencedBy[0])
	}
	// The move is named by the tenant as the source prints it, so 042 and
	// 42 are one move of one tenant.
	j.ID = JobID(dbName, j.cfg.Schema, plan.Tenant())
	if j.cfg.Demote {
		j.ID = DemoteID(dbName, j.cfg.Schema, plan.Tenant())
	}
	j.names = snapshot.NamesFor(j.ID)
	j.log = j.log.With("job", j.ID)
	if j.cfg.DryRun {
		return j.dryRun(ctx, src, dst, plan, refusals)
	}
	j.lease, err = acquireLease(ctx, j.cfg.SourceDSN, j.ID, plan.Tenant())
	if err != nil {
		return err
	}
	defer func() { j.lease.release() }()
	if err := checkSlots(ctx, src, j.names.Slot); err != nil {
		return err
	}
	if err := checkOwnership(ctx, src, plan.Tables); err != nil {
		return err
	}
	if !j.cfg.VerifyOnly {
		if err := checkStateRights(ctx, src, "source"); err != nil {
			return err
		}
		if j.cfg.Promote && j.cfg.Cutover.CatalogDSN != "" {
			cat, err := db.Open(ctx, db.Catalog, j.cfg.Cutover.CatalogDSN, "promoted")
			if err != nil {
				return err
			}
			err = checkStateRights(ctx, cat, "catalog")
			cat.Close(context.Background())
			if err != nil {
				return err
			}
		}
	}
	rec, err := state.ReadJob(ctx, src, j.ID)
	if err != nil {
		return err
	}
	prog, err := state.ReadProgress(ctx, dst, j.ID)
	if err != nil {
		return err
	}
	if rec != nil && rec.Active() {
		if err := j.sameMove(rec, prog); err != nil {
			return err
		}
	}
	if j.cfg.VerifyOnly {
		return j.runVerify(ctx, rec, prog)
	}
	fresh := prog == nil || rec == nil || !rec.Active() || prog.Phase != state.ProgressCatchup
	if err := checkTargetRole(ctx, dst, j.cfg.TargetSchema); err != nil {
		return err
	}
	if fresh {
		switch {
		case j.cfg.Demote:
			// Resumed or not: the pooled tables' shape and keys are
			// checked against the tenant's rows before anything is made.
			if err := checkPooled(ctx, src, dst, plan, prog != nil); err != nil {
				return err
			}
		case prog == nil:
			if err := checkTarget(ctx, dst, plan.Tables); err != nil {
				return err
			}
		}
		if !j.cfg.AllowEmpty {
			if err := checkNotEmpty(ctx, src, plan.Tables); err != nil {
				return err
			}
		}
	}
	// Logged only once every refusal has passed, so a refusal is the one
	// line on stderr.
	for _, n := range plan.Notes {
		if j.cfg.Demote {
			break // they are about target DDL, which a demotion never runs
		}
		j.log.Warn(n, "stage", "plan")
	}
	var keep string
	if err := src.QueryRow(ctx, `SELECT current_setting('max_slot_wal_keep_size')`).Scan(&keep); err == nil && keep == "-1" {
		j.log.Warn("the source has max_slot_wal_keep_size = -1: while promoted runs it drops a slot past --max-retained-wal, but a move left stopped keeps its slot's WAL without limit; set max_slot_wal_keep_size on the source as its own backstop", "stage", "plan")
	}
	for _, t := range plan.Tables {
		mode := "server row filter"
		if !t.ServerFilter {
			mode = "filtered by promoted (replica identity lacks " + j.cfg.TenantColumn + ")"
		}
		j.log.Info("table", "stage", "plan", "table", t.String(), "estimated_rows", t.EstimatedRows, "filter", mode)
	}

	// The record comes first: everything created from here on is found
	// and removed through it by cancel and cleanup.
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
		// The target was built from the definitions the copy began with;
		// a change since (even while no promoted ran) stops the move.
		planned := plan.Definitions
		plan.Definitions = rec.Definitions
		if j.follows() {
			// A replica's stream brings the target the columns added and
			// dropped since; it goes on from the definitions of now.
			if err := plan.ChangedColumns(planned); err != nil {
				return err
			}
			plan.Definitions, record.Definitions = planned, planned
		} else if err := plan.DriftFrom(planned); err != nil {
			return err
		}
	}
	if err := state.RecordJob(ctx, src, record); err != nil {
		return err
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
	if !fresh {
		return j.followAfter(ctx, nil)
	}
	if prog != nil {
		// A crash during the copy (the exported snapshot died with the
		// daemon and cannot be recreated, docs/hazards.md 1.1, 1.7), or a
		// move cancelled earlier: the copy starts over with a new slot.
		j.log.Warn("an earlier run stopped before the copy finished, or was cancelled: starting the copy again", "stage", "prepare")
		if err := j.restart(ctx, src, dst); err != nil {
			return err
		}
	}
	return j.start(ctx, src, dst)
}

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
	// Keys, indexes and foreign keys after the load: building them once is
	// far cheaper than maintaining them row by row.
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
	// Statistics and a visibility map for the freshly loaded tables: the
	// tenant's queries get plans at once, and the cutover's counts under
	// the fence are index-only scans instead of heap walks.
	for _, t := range j.plan.Tables {
		if !created(t) {
			continue // a table other tenants use is left to autovacuum
		}
		if _, err := dst.Exec(ctx, "VACUUM (ANALYZE) "+pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()); err != nil {
			return fmt.Errorf("vacuum %s.%s on the target: %w", t.TargetSchema, t.TargetName, err)
		}
	}
	j.log.Info("keys built", "stage", "snapshot", "seconds", fmt.Sprintf("%.2f", time.Since(keysStart).Seconds()))
	prog.Phase, prog.Applied, prog.RowsCopied = state.ProgressCatchup, slot.ConsistentPoint, rows
	if err := state.WriteProgress(ctx, dst, prog); err != nil {
		return err
	}
	ok = true
	err = j.catchup(ctx, repl, slot.ConsistentPoint)
	if db.Transient(err) && ctx.Err() == nil {
		return j.followAfter(ctx, err)
	}
	return err
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
	slot, err := snapshot.CreateSlot(ctx, repl, j.names.Slot)
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

func (j *Job) catchup(ctx context.Context, repl *pgconn.PgConn, from promoted.LSN) error {
	applyConn, err := apply.Connect(ctx, j.cfg.TargetDSN)
	if err != nil {
		return err
	}
	fetcher := snapshot.NewFetcher(j.cfg.SourceDSN)
	if j.FetchWait > 0 {
		fetcher.Wait = j.FetchWait
	}
	defer fetcher.Close(context.Background())
	sink := apply.NewPostgres(j.cfg.Apply, applyConn, j.ID, from, fetcher, j.cfg.Tenant, j.log.With("stage", "apply"))
	sink.Lose = j.Hooks.Lose
	sink.Bypass = j.cfg.Rollback
	sink.Evolve = j.follows()
	defer sink.Close(context.Background())
	gated := apply.NewGate(sink)
	scfg := j.cfg.Stream
	scfg.Slot, scfg.Publication = j.names.Slot, j.names.Publication
	if j.follows() {
		scfg.Evolve = j.addedColumn(nil)
	}
	st, err := stream.New(scfg, repl, j.plan.Tables, j.log.With("stage", "stream"))
	if err != nil {
		return err
	}
	j.mu.Lock()
	j.sink, j.stream, j.gate = sink, st, gated
	j.mu.Unlock()
	if err := j.startCatchup(ctx, !j.cfg.VerifyOnly); err != nil {
		return err
	}
	var also []func(context.Context) error
	if j.cfg.Promote {
		also = append(also, func(ctx context.Context) error { return j.cutover(ctx, st, sink) })
	}
	if j.cfg.VerifyOnly {
		also = append(also, j.verifyOnce)
	}
	err = j.budgetErr(j.runStream(ctx, st, from, gated, also...))
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

// startCatchup enters the catch-up phase: said, recorded on the source
// (unless record is false, for a verify-only run) and hooked.
func (j *Job) startCatchup(ctx context.Context, record bool) error {
	j.setPhase("catchup")
	if record {
		if err := j.recordPhase(ctx, state.PhaseCatchup); err != nil {
			return err
		}
	}
	if j.Hooks.Streaming != nil {
		j.Hooks.Streaming()
	}
	return nil
}

// runStream streams from the slot into sink until something fails or ctx
// ends, with the progress reports and the retained-WAL watch beside it,
// and also whatever the caller adds (the cutover, a verification).
func (j *Job) runStream(ctx context.Context, st *stream.Stream, from promoted.LSN, sink promoted.Sink, also ...func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	stop := j.reportProgress(gctx)
	defer stop()
	g.Go(func() error { return st.Run(gctx, from, sink) })
	g.Go(func() error { return j.watchSlot(gctx, j.watchInterval()) })
	for _, f := range also {
		g.Go(func() error { return f(gctx) })
	}
	return g.Wait()
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

// recordPhase notes the phase in the move's record on the source.
func (j *Job) recordPhase(ctx context.Context, phase string) error {
	return state.SetJobPhase(ctx, j.src, j.ID, phase, "", nil)
}

// DefaultStallAfter is how long the apply may make no progress while
// behind the source before the move says so (a log line each interval,
// and the promoted_job_apply_stalled_seconds gauge).
const DefaultStallAfter = 30 * time.Second

// reportProgress logs progress and updates gauges until stopped. A
// catch-up whose applied position stands still while the source moves on
// is reported as stalled, never printed as ordinary progress.
func (j *Job) reportProgress(ctx context.Context) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(j.cfg.ProgressInterval)
		defer t.Stop()
		var last promoted.LSN
		since := time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			switch j.Phase() {
			case "snapshot":
				if !j.cfg.LiveProgress {
					j.log.Info("progress", "stage", "snapshot", "rows_copied", j.RowsCopied())
				}
			case "catchup":
				lag, applied := j.Lag(), j.Applied()
				j.m.lag.Set(float64(lag))
				if applied != last || lag == 0 {
					last, since = applied, time.Now()
				}
				stalled := time.Since(since)
				if stalled < j.stallAfter() {
					j.m.stalled.Set(0)
					if !j.cfg.LiveProgress {
						j.log.Info("progress", "stage", "catchup", "applied_lsn", applied.String(), "lag_bytes", lag)
					}
					continue
				}
				j.m.stalled.Set(stalled.Seconds())
				if len(j.verifying) > 0 {
					j.log.Warn("the apply is paused for a verification", "stage", "catchup", "paused_s", int64(stalled.Seconds()), "lag_bytes", lag)
				} else {
					j.log.Warn("the apply has made no progress while the source moves on: the target may be locked or unreachable, and the slot retains WAL meanwhile", "stage", "catchup", "stalled_s", int64(stalled.Seconds()), "applied_lsn", applied.String(), "lag_bytes", lag)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}
