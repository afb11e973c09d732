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
	// BeforeSlot runs after the plan is recorded, just before the slot and
	// its exported snapshot are created.
	BeforeSlot func()
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
	clock       lagClock

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

// LagSeconds is how long the source has had WAL the target has not
// durably applied: 0 when caught up, or before the catch-up.
func (j *Job) LagSeconds() float64 {
	if j.Lag() == 0 {
		return 0
	}
	return j.clock.lagSeconds(j.Applied(), time.Now())
}

// sampleLag feeds the lag clock the source's WAL end as the stream last
// heard it.
func (j *Job) sampleLag() {
	j.mu.Lock()
	s := j.stream
	j.mu.Unlock()
	if s != nil {
		j.clock.sample(s.ServerWALEnd(), time.Now())
	}
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
	var targetTenant map[string]promoted.Column
	if j.cfg.Demote {
		if targetTenant, err = tenantColumns(ctx, dst, j.cfg.TargetSchema, j.cfg.TenantColumn); err != nil {
			return err
		}
	}
	plan, err := schema.Load(ctx, src, schema.Config{Schema: j.cfg.Schema, TargetSchema: j.cfg.TargetSchema,
		TenantColumn: j.cfg.TenantColumn, Tables: j.cfg.Tables, Sequences: j.cfg.Sequences, Tenant: promoted.Tenant(j.cfg.Tenant), SameDatabase: same,
		TargetTenant: targetTenant})
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
		switch {
		case t.Whole():
			mode = "whole table (no " + j.cfg.TenantColumn + " on the source: every row is the tenant's)"
		case !t.ServerFilter:
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

// DefaultStallAfter is how long the apply may make no progress while
// behind the source before the move says so (a log line each interval,
// and the promoted_job_apply_stalled_seconds gauge).
const DefaultStallAfter = 30 * time.Second
