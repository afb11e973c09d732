package cutover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/verify"
)

// Config tunes the cutover.
type Config struct {
	// MaxLag is how far behind (WAL bytes) the target may be when the
	// fence is armed: the drain must fit in the timeout.
	MaxLag int64
	// Timeout bounds fence-armed-to-flip; past it the fence is disarmed.
	Timeout time.Duration
	// Location is what the catalog entry flips to.
	Location string
	// FlipSQL replaces the default catalog update (see Catalog).
	FlipSQL string
	// CatalogDSN is the catalog database (default: the source).
	CatalogDSN string
	// SkipVerify skips the count and checksum comparison under the fence.
	SkipVerify bool
	// SettleWait bounds how long a flip whose COMMIT went unanswered is
	// asked about on fresh sessions before the outcome counts as unknown
	// (0: 30s).
	SettleWait time.Duration
	// FenceCheck is what is compared under the fence after the full live
	// verification just before it: everything (CheckFull), the rows written
	// since then, as the source recorded them (CheckChanged), or the first when it is
	// quick (CheckAuto).
	FenceCheck string
}

// The kinds of check under the fence.
const (
	CheckAuto    = "auto"
	CheckFull    = "full"
	CheckChanged = "changed"
)

// Bind registers the cutover's flags.
func (c *Config) Bind(fs *pflag.FlagSet) {
	fs.Int64Var(&c.MaxLag, "max-lag", 1<<20, "start the cutover only when the target is less than this many WAL bytes behind")
	fs.DurationVar(&c.Timeout, "cutover-timeout", 5*time.Second, "longest the tenant's writes may be fenced; past it the fence is disarmed and the source stays authoritative")
	fs.StringVar(&c.Location, "location", "", "what the tenant's catalog entry flips to (default: the target's host:port/database)")
	fs.StringVar(&c.FlipSQL, "flip-sql", "", "flip your own routing table instead of promoted.tenant_catalog: $1 tenant, $2 location, $3 target schema")
	fs.StringVar(&c.CatalogDSN, "catalog", "", "catalog database connection string (default: the source)")
	fs.BoolVar(&c.SkipVerify, "skip-verify", false, "do not compare counts and checksums under the fence (faster, unchecked)")
	fs.StringVar(&c.FenceCheck, "fence-check", CheckAuto, "what is compared under the fence: full (every row), changed (the rows written since the live verification just before, recorded by the source), or auto (full when the whole comparison took under 1% of --cutover-timeout)")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	switch {
	case c.MaxLag < 0:
		return fmt.Errorf("--max-lag %d is negative: pass a number of WAL bytes such as 1048576", c.MaxLag)
	case c.MaxLag == 0:
		c.MaxLag = 1 << 20
	}
	switch {
	case c.Timeout < 0:
		return fmt.Errorf("--cutover-timeout %s is negative: pass a duration such as 5s", c.Timeout)
	case c.Timeout == 0:
		c.Timeout = 5 * time.Second
	}
	switch c.FenceCheck {
	case "":
		c.FenceCheck = CheckAuto
	case CheckAuto, CheckFull, CheckChanged:
	default:
		return fmt.Errorf("--fence-check %q: use auto, full or changed", c.FenceCheck)
	}
	return nil
}

// Hooks run at the steps of the cutover, so tests can inject faults (a
// crash, a slow drain, a lost COMMIT) exactly there.
type Hooks struct {
	BeforeArm, AfterArm, AfterDrain, AfterFlip func()
	// BeforeFlipCommit runs just before the catalog flip's COMMIT is sent.
	BeforeFlipCommit func()
}

// Drainer is the part of the sink the cutover waits on.
type Drainer interface {
	// Marker returns the end LSN of the applied transaction that carried
	// the marker, once it is durable on the target.
	Marker(content string) (promoted.LSN, bool)
}

// Move is what the cutover needs to know about the move.
type Move struct {
	JobID, Tenant, Schema, TargetSchema string
	Tables                              []*promoted.Table
	Sequences                           []schema.Sequence
	// Pooled is set when the target is pooled tables (a demotion): its
	// sequences are every tenant's, set past the tenant's ids.
	Pooled bool
	// Entry is the catalog entry read at prepare: the flip's
	// compare-and-swap is against its version.
	Entry state.Entry
}

// Summary is what the cutover did.
type Summary struct {
	// Blocked is fence armed to catalog flipped: how long the tenant's
	// writes were rejected.
	Blocked    time.Duration
	LagAtFence int64
	MarkerLSN  promoted.LSN
	// PreVerify is the full comparison at a consistent point just before
	// the fence, when the job made one; Verify is the check under it.
	PreVerify *verify.Result
	Verify    *verify.Result
	Version   int64
}

// Cutover runs one attempt at the cutover.
type Cutover struct {
	cfg     Config
	src     *pgx.Conn // source, pinned session settings
	dst     *pgx.Conn // target, pinned session settings
	catalog *state.Catalog
	log     *slog.Logger
	m       *metrics
	Hooks   Hooks
	// Drift, when set, compares the source's table definitions and
	// publication with the plan under the fence, after the drain: a
	// change stops the cutover before the flip.
	Drift func(ctx context.Context, src *pgx.Conn) error
	// Reconnect opens a fresh source session, to disarm the fence after a
	// failure that broke the cutover's own.
	Reconnect func(ctx context.Context) (*pgx.Conn, error)
	// Check replaces the full comparison under the fence (the job
	// re-checks only the rows changed since a full live verification just
	// before the cutover, so the fence lasts as long as the changes, not
	// the tenant's size).
	Check func(ctx context.Context, src, dst *pgx.Conn) (*verify.Result, error)
	// BeforeFlip runs under the fence, after every check, just before the
	// catalog flips: a promotion creates its rollback slot on the target
	// there, so the reverse stream starts before the tenant's first write
	// at its new place. An error stops the cutover (fence disarmed).
	BeforeFlip func(ctx context.Context, src *pgx.Conn) error
	// SrcAux and DstAux, when both set, are second sessions on each side,
	// opened before the fence: the drift check and the sequences then run
	// on them beside the check under the fence, not after it.
	SrcAux, DstAux *pgx.Conn
}

// New makes a cutover over open connections; it owns none of them.
func New(cfg Config, src, dst *pgx.Conn, catalog *state.Catalog, tenant string, log *slog.Logger) *Cutover {
	return &Cutover{cfg: cfg, src: src, dst: dst, catalog: catalog, log: log, m: newMetrics(tenant, cfg.Timeout)}
}

// Run arms the fence, waits out older transactions, writes the marker,
// drains through it, verifies, syncs sequences and flips. Any failure, or
// the timeout, disarms the fence before returning: the source stays
// authoritative and the move can try again. The one exception is a flip
// whose outcome cannot be learnt (its COMMIT went unanswered and the
// catalog database cannot be asked): the fence then stays armed, because
// disarming it after a flip that did commit would let the tenant write
// where nobody reads. lag reports the current lag.
func (c *Cutover) Run(ctx context.Context, mv Move, sink Drainer, lag int64) (*Summary, error) {
	sum := &Summary{LagAtFence: lag}
	if c.Hooks.BeforeArm != nil {
		c.Hooks.BeforeArm()
	}
	start := time.Now()
	armedAt, err := Arm(ctx, c.src, mv)
	if err != nil {
		return nil, err
	}
	c.m.attempts.Inc()
	c.m.armedAt.Set(float64(start.UnixNano()) / 1e9) // this host's clock, as blocked_seconds
	c.log.Info("fence armed", "lag_bytes", lag)
	flipped, unknown := false, false
	defer func() {
		if flipped || unknown {
			return
		}
		if err := c.disarm(mv); err != nil {
			c.log.Error("disarm fence after a failed cutover: the tenant's writes stay fenced until `promoted cancel` or a rerun", "err", err)
			return
		}
		c.m.armedAt.Set(0)
		c.m.aborted.Inc()
		c.log.Warn("fence disarmed: the source stays authoritative", "fenced_ms", time.Since(start).Milliseconds())
	}()
	if c.Hooks.AfterArm != nil {
		c.Hooks.AfterArm()
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := Barrier(dctx, c.src); err != nil {
		return nil, err
	}
	step := func(name string) { c.log.Debug("cutover step", "step", name, "ms", time.Since(start).Milliseconds()) }
	step("barrier")
	content := fmt.Sprintf("fence:%s:%d", mv.JobID, armedAt.UnixNano())
	if sum.MarkerLSN, err = EmitMarker(dctx, c.src, content); err != nil {
		return nil, err
	}
	step("marker")
	for {
		if _, ok := sink.Marker(content); ok {
			break
		}
		select {
		case <-dctx.Done():
			return nil, fmt.Errorf("the target did not apply the fence marker at %s within --cutover-timeout %s: the fence is disarmed; retry when the lag is lower or raise --cutover-timeout", sum.MarkerLSN, c.cfg.Timeout)
		case <-time.After(time.Millisecond):
		}
	}
	c.log.Info("drained through the fence marker", "marker_lsn", sum.MarkerLSN.String(), "ms", time.Since(start).Milliseconds())
	if c.Hooks.AfterDrain != nil {
		c.Hooks.AfterDrain()
	}
	// The drift check and the sequences need no result of the check:
	// with second sessions they run beside it, and the fence lasts as
	// long as the longer of the two instead of their sum.
	aux := c.SrcAux != nil && c.DstAux != nil
	var side errgroup.Group
	if aux {
		side.Go(func() error { return c.driftAndSequences(dctx, mv, c.SrcAux, c.DstAux, step) })
	}
	verr := c.verify(dctx, mv, sum)
	serr := side.Wait()
	if verr != nil {
		if sum.Verify != nil {
			return sum, verr
		}
		return nil, verr
	}
	step("verified")
	if serr != nil {
		return nil, serr
	}
	if !aux {
		if err := c.driftAndSequences(dctx, mv, c.src, c.dst, step); err != nil {
			return nil, err
		}
	}
	// The triggers are checked again just before the flip: the fence
	// must still hold while the catalog moves.
	if err := checkTriggers(dctx, c.src, mv.Tables); err != nil {
		return nil, err
	}
	if c.BeforeFlip != nil {
		if err := c.BeforeFlip(dctx, c.src); err != nil {
			return nil, fmt.Errorf("under the fence: %w; the fence is disarmed and the catalog unchanged", err)
		}
		step("before flip")
	}
	if dctx.Err() != nil {
		return nil, fmt.Errorf("the cutover took longer than --cutover-timeout %s: the fence is disarmed and the catalog unchanged", c.cfg.Timeout)
	}
	sum.Version, err = c.catalog.Flip(dctx, mv.JobID, mv.Tenant, c.cfg.Location, mv.TargetSchema, mv.Entry.Version,
		state.Hooks{BeforeCommit: c.Hooks.BeforeFlipCommit})
	if errors.Is(err, state.ErrOutcomeUnknown) {
		// The COMMIT was sent and not answered: ask a fresh session,
		// which waits for the flip transaction to end. Never guess.
		wait := c.cfg.SettleWait
		if wait <= 0 {
			wait = 30 * time.Second
		}
		ok, v, rerr := c.catalog.SettleFlip(mv.JobID, wait)
		switch {
		case rerr != nil:
			unknown = true
			c.log.Error("the catalog flip's outcome is unknown: the fence stays armed", "commit_err", err, "err", rerr)
			return nil, fmt.Errorf("the catalog flip's COMMIT went unanswered and the catalog database cannot be asked whether it committed, so the fence stays armed (no write is lost): rerun promote once the catalog database is reachable, it settles the outcome: %w", rerr)
		case ok:
			c.log.Warn("the catalog flip's COMMIT went unanswered, but the flip committed", "err", err)
			sum.Version, err = v, nil
		default:
			c.log.Warn("the catalog flip's COMMIT went unanswered, and the flip did not commit", "err", err)
		}
	}
	if err != nil {
		return nil, err
	}
	flipped = true
	c.m.armedAt.Set(0)
	sum.Blocked = time.Since(start)
	c.m.blocked.Observe(sum.Blocked.Seconds())
	c.log.Info("catalog flipped", "version", sum.Version, "location", c.cfg.Location, "blocked_ms", sum.Blocked.Milliseconds())
	if c.Hooks.AfterFlip != nil {
		c.Hooks.AfterFlip()
	}
	return sum, nil
}

// verify runs the check under the fence (unless --skip-verify), recording
// its result in sum.
func (c *Cutover) verify(ctx context.Context, mv Move, sum *Summary) error {
	if c.cfg.SkipVerify {
		return nil
	}
	check := c.Check
	if check == nil {
		check = func(ctx context.Context, src, dst *pgx.Conn) (*verify.Result, error) {
			return verify.Compare(ctx, src, dst, mv.Tables, verify.Options{})
		}
	}
	res, err := check(ctx, c.src, c.dst)
	if err != nil {
		return fmt.Errorf("verify under the fence: %w", err)
	}
	sum.Verify = res
	if !res.Equal() {
		return fmt.Errorf("the target differs from the source under the fence, so the catalog was not flipped: %s", strings.ReplaceAll(res.Summary(), "\n", "; "))
	}
	return nil
}

// driftAndSequences compares the source's definitions with the plan's and
// sets the target's sequences past the source's, under the fence.
func (c *Cutover) driftAndSequences(ctx context.Context, mv Move, src, dst *pgx.Conn, step func(string)) error {
	if c.Drift != nil {
		if err := c.Drift(ctx, src); err != nil {
			return fmt.Errorf("under the fence: %w; the fence is disarmed and the catalog unchanged", err)
		}
		step("drift")
	}
	var err error
	if mv.Pooled {
		err = SyncPooledSequences(ctx, src, dst, mv.Sequences)
	} else {
		err = SyncSequences(ctx, src, dst, mv.Sequences, true)
	}
	if err != nil {
		return err
	}
	step("sequences")
	return nil
}

// disarm removes the fence after a failed cutover: on the cutover's own
// session, or, when a failure broke that one, on fresh sessions for up to
// 30 seconds.
func (c *Cutover) disarm(mv Move) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := state.DisarmFence(ctx, c.src, mv.Schema, mv.Tenant, mv.JobID)
	for err != nil && c.Reconnect != nil && ctx.Err() == nil {
		var conn *pgx.Conn
		if conn, err = c.Reconnect(ctx); err == nil {
			err = state.DisarmFence(ctx, conn, mv.Schema, mv.Tenant, mv.JobID)
			conn.Close(context.Background())
		}
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return err
}
