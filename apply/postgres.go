// Package apply holds the sinks a stream hands the tenant's transactions to.
// The PostgreSQL sink applies each source transaction (or a group of whole
// transactions) in one target transaction that also records the applied
// LSN, so a restart resumes exactly after what the target holds.
package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/pflag"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/state"
)

// Config tunes the PostgreSQL sink.
type Config struct {
	// BatchChanges commits a group of whole transactions once it holds this
	// many changes; a quiet stream commits whenever its queue runs dry.
	BatchChanges int
	// BatchAge commits a group older than this.
	BatchAge time.Duration
	// Pipeline is how many statements are sent per round trip.
	Pipeline int
	// Timeout bounds one Apply or Flush: a target that does not answer
	// for this long (a network gone silent, a lock that is never freed)
	// makes the move reconnect and resume from what is durable.
	Timeout time.Duration
}

// Bind registers the sink's flags.
func (c *Config) Bind(fs *pflag.FlagSet) {
	fs.IntVar(&c.BatchChanges, "apply-batch", 2000, "commit the target transaction after this many changes (always at a source transaction boundary)")
	fs.DurationVar(&c.BatchAge, "apply-batch-age", 500*time.Millisecond, "commit the target transaction when it is older than this")
	fs.DurationVar(&c.Timeout, "apply-timeout", time.Minute, "longest the target may take to answer the apply before the move reconnects and resumes")
}

// Validate fills defaults for zero values and refuses negative ones.
func (c *Config) Validate() error {
	switch {
	case c.BatchChanges < 0:
		return fmt.Errorf("--apply-batch %d is negative: pass a number of changes such as 2000", c.BatchChanges)
	case c.BatchAge < 0:
		return fmt.Errorf("--apply-batch-age %s is negative: pass a duration such as 500ms", c.BatchAge)
	case c.Timeout < 0:
		return fmt.Errorf("--apply-timeout %s is negative: pass a duration such as 1m", c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = time.Minute
	}
	if c.BatchChanges == 0 {
		c.BatchChanges = 2000
	}
	if c.BatchAge == 0 {
		c.BatchAge = 500 * time.Millisecond
	}
	if c.Pipeline <= 0 {
		c.Pipeline = 256
	}
	return nil
}

// ErrDiverged reports that the target does not hold a row the source
// changed: someone wrote to the target, or a change was lost. Nothing more
// is applied (docs/hazards.md 8.3).
type ErrDiverged struct {
	Op    promoted.Op
	Table string
	Key   string
	Rows  int64
	// Want is the rows the statement had to touch (0: one).
	Want int64
}

// Fatal marks the error as one no retry can fix.
func (e *ErrDiverged) Fatal() bool { return true }

func (e *ErrDiverged) Error() string {
	want := max(e.Want, 1)
	return fmt.Sprintf("%s of %s %s touched %d rows on the target instead of %d: the target has diverged from the source (was it written to directly?); run `promoted verify` to see the differences, then cancel and start the move again", e.Op, e.Table, e.Key, e.Rows, want)
}

// Postgres is the PostgreSQL sink.
type Postgres struct {
	cfg   Config
	conn  *pgx.Conn
	jobID string
	fetch promoted.RowFetcher
	log   *slog.Logger
	m     *metrics

	// Lose, when set, drops the changes it returns true for, unapplied and
	// untracked: tests use it to prove a change the stream lost is caught.
	Lose func(*promoted.Change) bool
	// Bypass makes each target transaction pass the target's own write
	// fence (a rollback applies into the pooled rows a promotion fenced,
	// which stay fenced for the application until the flip back).
	Bypass bool
	// Evolve makes the sink follow ADD COLUMN and DROP COLUMN on the
	// source (a replica's); without it a Relation change stops the apply.
	Evolve bool

	durable atomic.Uint64
	changes atomic.Int64
	// tracking is set once StartTracking has run.
	tracking atomic.Bool

	// The open target transaction.
	inTx      bool
	xid       uint32 // the source transaction being applied
	midTxn    bool   // a Partial source transaction is open
	txStart   time.Time
	txChanges int
	pendEnd   promoted.LSN
	batch     *pgconn.Batch
	checks    []check
	prepared  map[string]string
	sql       statements
	pendMark  map[string]promoted.LSN

	pend   pending
	shapes map[shapeKey]string

	mu      sync.Mutex
	track   tracker
	markers map[string]promoted.LSN
	// gone holds keys whose INSERT found the source row already gone when
	// re-fetched; a later UPDATE or DELETE of them finds nothing, rightly.
	gone map[string]bool
}

// check is what one pipelined statement must have done.
type check struct {
	c        *promoted.Change
	keyCols  []int
	exactOne bool
	// rows, when set, is the exact number of rows a multi-row INSERT must
	// have inserted.
	rows int64
}

// Connect opens the sink's own session on the target. The session runs
// with session_replication_role=replica, so target triggers and foreign-key
// checks do not fire on apply (docs/hazards.md 8.1), with synchronous_commit on,
// so a commit is durable before it is acknowledged (docs/hazards.md 5.2).
func Connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cc, err := db.Config(db.Target, dsn, "promoted-apply")
	if err != nil {
		return nil, err
	}
	cc.RuntimeParams["synchronous_commit"] = "on"
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect to the target: %w", err)
	}
	if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("the target role cannot set session_replication_role (needed so target triggers and foreign keys do not fire on apply): GRANT SET ON PARAMETER session_replication_role TO the role: %w", err)
	}
	return conn, nil
}

// NewPostgres makes a sink over conn (from Connect) for the job, starting
// from the job's applied LSN.
func NewPostgres(cfg Config, conn *pgx.Conn, jobID string, applied promoted.LSN, fetch promoted.RowFetcher, tenant string, log *slog.Logger) *Postgres {
	cfg.Validate()
	p := &Postgres{cfg: cfg, conn: conn, jobID: jobID, fetch: fetch, log: log, m: newMetrics(tenant),
		prepared: map[string]string{}, markers: map[string]promoted.LSN{}, gone: map[string]bool{}, pendMark: map[string]promoted.LSN{}}
	p.durable.Store(uint64(applied))
	p.m.applied.Set(float64(applied))
	return p
}

// Durable is the end LSN of the last committed source transaction.
func (p *Postgres) Durable() promoted.LSN { return promoted.LSN(p.durable.Load()) }

// Changes is the number of row changes this sink has applied (or queued
// into the open target transaction).
func (p *Postgres) Changes() int64 { return p.changes.Load() }

// Marker returns the end LSN of the durably applied transaction that
// carried the fence marker with this content.
func (p *Postgres) Marker(content string) (promoted.LSN, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.markers[content]
	return l, ok
}

// ErrTimeout reports a target that did not answer within the apply's
// timeout: the connection is treated as broken, and the move reconnects.
type ErrTimeout struct {
	After time.Duration
	Err   error
}

func (e *ErrTimeout) Error() string {
	return fmt.Sprintf("the target did not answer the apply within %s (--apply-timeout): %v", e.After, e.Err)
}

func (e *ErrTimeout) Unwrap() error { return e.Err }

// Silent marks the error as a broken connection, worth a retry.
func (e *ErrTimeout) Silent() bool { return true }

// bounded runs f under the apply's timeout, telling a target that did not
// answer from any other failure.
func (p *Postgres) bounded(ctx context.Context, f func(context.Context) error) error {
	bctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	err := f(bctx)
	if err != nil && ctx.Err() == nil && errors.Is(bctx.Err(), context.DeadlineExceeded) {
		p.inTx = false
		return &ErrTimeout{After: p.cfg.Timeout, Err: err}
	}
	return err
}

// Apply queues one transaction (or part) into the open target transaction.
func (p *Postgres) Apply(ctx context.Context, txn *promoted.Txn) error {
	return p.apply(ctx, txn)
}

func (p *Postgres) apply(ctx context.Context, txn *promoted.Txn) error {
	if txn.Heartbeat() {
		if txn.EndLSN <= max(p.Durable(), p.pendEnd) {
			return nil
		}
	} else if txn.FinalLSN < p.Durable() {
		// Its commit lies before what the target holds: applied before a
		// restart (the stream skips these too; this is the second guard).
		return nil
	}
	if !p.inTx {
		p.begin()
	}
	p.midTxn, p.xid = txn.Partial, txn.Xid
	for i := range txn.Changes {
		if err := p.change(ctx, &txn.Changes[i]); err != nil {
			return err
		}
	}
	if txn.Partial {
		return nil
	}
	for content := range p.pendMark {
		p.pendMark[content] = txn.EndLSN
	}
	if txn.EndLSN > p.pendEnd {
		p.pendEnd = txn.EndLSN
	}
	if !txn.Heartbeat() {
		p.m.txns.Inc()
	}
	if p.txChanges >= p.cfg.BatchChanges || time.Since(p.txStart) >= p.cfg.BatchAge {
		return p.commit(ctx)
	}
	return nil
}

// Flush commits the open target transaction.
func (p *Postgres) Flush(ctx context.Context) error {
	return p.flush(ctx)
}

func (p *Postgres) flush(ctx context.Context) error {
	if p.midTxn {
		// Stopped inside a large source transaction: none of the group is
		// durable or acknowledged, so dropping it loses nothing.
		return p.rollback(ctx)
	}
	return p.commit(ctx)
}

// Close ends the sink's session, rolling back anything uncommitted.
func (p *Postgres) Close(ctx context.Context) error { return p.conn.Close(ctx) }

func (p *Postgres) begin() {
	p.inTx, p.txStart, p.txChanges = true, time.Now(), 0
	p.pendEnd = p.Durable()
	p.batch = &pgconn.Batch{}
	p.batch.ExecParams("BEGIN", nil, nil, nil, nil)
	p.batch.ExecParams("SET CONSTRAINTS ALL DEFERRED", nil, nil, nil, nil)
	p.checks = append(p.checks[:0], check{}, check{})
	if p.Bypass {
		p.batch.ExecParams(state.BypassSQL, nil, nil, nil, nil)
		p.checks = append(p.checks, check{})
	}
}

func (p *Postgres) rollback(ctx context.Context) error {
	if !p.inTx {
		return nil
	}
	p.inTx, p.midTxn, p.batch, p.checks = false, false, nil, p.checks[:0]
	p.pend = pending{}
	clear(p.pendMark)
	return p.bounded(ctx, func(ctx context.Context) error {
		_, err := p.conn.Exec(ctx, "ROLLBACK")
		return err
	})
}

func (p *Postgres) commit(ctx context.Context) error {
	if !p.inTx {
		return nil
	}
	if p.pendEnd > p.Durable() {
		p.queue(state.AdvanceSQL,
			[][]byte{[]byte(p.jobID), []byte(p.pendEnd.String())}, check{exactOne: true})
		for content, lsn := range p.pendMark {
			p.queue(state.MarkerSQL,
				[][]byte{[]byte(p.jobID), []byte(content), []byte(lsn.String())}, check{exactOne: true})
		}
	}
	if p.Bypass {
		p.queue(state.UnbypassSQL, nil, check{})
	}
	start := time.Now()
	// Row counts are checked before COMMIT is sent: a divergence must
	// leave nothing of the group, the progress LSN included, committed.
	if err := p.exec(ctx); err != nil {
		return err
	}
	if err := p.bounded(ctx, func(ctx context.Context) error {
		_, err := p.conn.PgConn().Exec(ctx, "COMMIT").ReadAll()
		return err
	}); err != nil {
		p.inTx = false
		return fmt.Errorf("apply: commit: %w", err)
	}
	p.inTx = false
	p.m.commits.Inc()
	p.m.commitSeconds.Observe(time.Since(start).Seconds())
	if p.pendEnd > p.Durable() {
		p.durable.Store(uint64(p.pendEnd))
		p.m.applied.Set(float64(p.pendEnd))
	}
	if len(p.pendMark) > 0 {
		p.mu.Lock()
		for content, lsn := range p.pendMark {
			p.markers[content] = lsn
		}
		p.mu.Unlock()
		clear(p.pendMark)
	}
	return nil
}

// queue adds a statement to the pipeline after every pending batch, which
// come before it in the source's order.
func (p *Postgres) queue(sql string, params [][]byte, c check) {
	p.flushAll()
	p.queueRaw(sql, params, c)
}

// queueRaw adds a statement to the pipeline, preparing it once per
// session.
func (p *Postgres) queueRaw(sql string, params [][]byte, c check) {
	name, ok := p.prepared[sql]
	if !ok {
		name = "promoted_" + strconv.Itoa(len(p.prepared)+1)
		p.prepared[sql] = name
		// Parse in the same pipeline; the server infers parameter types.
		p.batch.ExecParams("PREPARE "+name+" AS "+sql, nil, nil, nil, nil)
		p.checks = append(p.checks, check{})
	}
	p.batch.ExecPrepared(name, params, nil, nil)
	p.checks = append(p.checks, c)
}

// exec sends the pipeline and checks what each statement did.
func (p *Postgres) exec(ctx context.Context) error {
	p.flushAll()
	if p.batch == nil || len(p.checks) == 0 {
		return nil
	}
	i := 0
	var firstErr error
	if err := p.bounded(ctx, func(ctx context.Context) error {
		mrr := p.conn.PgConn().ExecBatch(ctx, p.batch)
		for mrr.NextResult() {
			tag, err := mrr.ResultReader().Close()
			if err != nil {
				firstErr = err
				break
			}
			if i < len(p.checks) {
				if err := p.verify(p.checks[i], tag.RowsAffected()); err != nil && firstErr == nil {
					firstErr = err
				}
			}
			i++
		}
		err := mrr.Close()
		if firstErr == nil {
			firstErr = err
		}
		return firstErr
	}); err != nil {
		var timeout *ErrTimeout
		if errors.As(err, &timeout) {
			p.batch, p.checks = &pgconn.Batch{}, p.checks[:0]
			return err
		}
	}
	checks := p.checks
	p.batch = &pgconn.Batch{}
	p.checks = p.checks[:0]
	if firstErr != nil {
		p.inTx = false
		var pgErr *pgconn.PgError
		if errors.As(firstErr, &pgErr) && i < len(checks) && checks[i].c != nil {
			return fmt.Errorf("apply %s to %s: %w", checks[i].c.Op, checks[i].c.Table, firstErr)
		}
		return fmt.Errorf("apply: %w", firstErr)
	}
	return nil
}

func (p *Postgres) verify(c check, rows int64) error {
	if c.rows > 0 && rows != c.rows {
		return &ErrDiverged{Op: c.c.Op, Table: c.c.Table.String(), Key: fmt.Sprintf("(a batch of %d keys)", c.rows), Rows: rows, Want: c.rows}
	}
	if !c.exactOne || rows == 1 {
		return nil
	}
	if c.c == nil {
		return fmt.Errorf("apply: bookkeeping statement touched %d rows instead of 1 (is promoted.progress missing this job's row?)", rows)
	}
	key := keyText(c.c.Table, c.keyCols, c.c.Key)
	p.mu.Lock()
	gone := p.gone[c.c.Table.String()+key]
	p.mu.Unlock()
	if rows == 0 && gone {
		return nil
	}
	return &ErrDiverged{Op: c.c.Op, Table: c.c.Table.String(), Key: key, Rows: rows}
}
