package job

import (
	"context"
	"errors"
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
	rounds []*verify.Result
	// copyChecked is set when the copy was verified at its snapshot and
	// this process's sink has tracked every row it changed since.
	copyChecked bool
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
func (j *Job) LagSeconds() float64 { return j.lagSeconds(j.Lag(), j.Applied()) }

// lagSeconds is LagSeconds from a lag and applied position already read.
func (j *Job) lagSeconds(lag int64, applied promoted.LSN) float64 {
	if lag == 0 {
		return 0
	}
	return j.clock.lagSeconds(applied, time.Now())
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

// run is one attempt at the move: plan, admit under the lease, check the
// target, record the move, then copy (or resume the catch-up) and go on
// through the cutover. Run retries it on transient failures.
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
	refusals, err := j.planMove(ctx, src, dst)
	if err != nil {
		return err
	}
	if j.cfg.DryRun {
		return j.dryRun(ctx, src, dst, j.plan, refusals)
	}
	j.lease, err = acquireLease(ctx, j.cfg.SourceDSN, j.ID, j.plan.Tenant())
	if err != nil {
		return err
	}
	defer func() { j.lease.release() }()
	rec, prog, err := j.admit(ctx, src, dst)
	if err != nil {
		return err
	}
	if j.cfg.VerifyOnly {
		return j.runVerify(ctx, rec, prog)
	}
	// A move resumes its catch-up only from a copy that finished; anything
	// else copies (again).
	fresh := prog == nil || rec == nil || !rec.Active() || prog.Phase != state.ProgressCatchup
	if err := j.preflightTarget(ctx, src, dst, fresh, prog); err != nil {
		return err
	}
	j.logPlan(ctx, src)
	// The record comes first: everything created from here on is found
	// and removed through it by cancel and cleanup.
	if err := j.recordMove(ctx, src, rec, fresh); err != nil {
		return err
	}
	if j.cfg.FixReplicaIdentity {
		if err := fixReplicaIdentity(ctx, src, j.plan.Tables); err != nil {
			return err
		}
	}
	if j.cfg.Promote {
		done, err := j.preparePromote(ctx, src)
		if err != nil || done {
			return err
		}
		// The keys recorded for this process's checks are of no use to the
		// next one, which records afresh or verifies in full: while no
		// promoted runs the move, the tenant's writes record nothing. An
		// armed fence is never touched.
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := state.StopTracking(sctx, j.src, j.ID); err != nil {
				j.log.Warn("stop tracking the tenant's writes (the next run does)", "err", err)
			}
		}()
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
