// Package stream reads the tenant's changes from a logical replication slot
// (pgoutput), in commit order, and hands whole transactions to a Sink. It
// answers keepalives, and reports to the source only the position the sink
// has made durable, never what was merely received (docs/hazards.md 5.1).
package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
)

// Config tunes the stream.
type Config struct {
	Slot        string
	Publication string
	// StatusInterval is the longest the source waits for a standby status
	// update; keep it well under wal_sender_timeout.
	StatusInterval time.Duration
	// HeartbeatInterval is how often an idle tenant's progress is recorded
	// in the sink, so the slot advances while other tenants write.
	HeartbeatInterval time.Duration
	// MaxTxnChanges splits a large source transaction into parts of this
	// many changes, so memory stays bounded; the sink commits it whole.
	MaxTxnChanges int
	// MarkerPrefix is the pg_logical_emit_message prefix passed through as
	// Message changes (the cutover's fence marker).
	MarkerPrefix string
	// CommitDelay is how long the sink's open group waits for the next
	// transaction once the queue runs dry before it is committed: a
	// backlog then commits in large groups instead of one target commit
	// per source transaction, at a latency cost of at most this much.
	CommitDelay time.Duration
	// ReceiveTimeout is the longest the source may stay silent: each
	// standby status update asks it for a reply, so a silence this long
	// means the network or the source is gone, even when no TCP reset
	// ever arrives (0: 30s).
	ReceiveTimeout time.Duration
	// Evolve, when set, makes the stream follow ADD COLUMN and DROP
	// COLUMN on the source: the sink gets a Relation change with the
	// table's new definition before the first change that uses it. A
	// replica sets it; a move, which ends in a flip to a target planned
	// from the old definition, leaves it nil and stops instead.
	Evolve ColumnResolver
}

// ErrSilent reports a source that sent nothing for longer than
// ReceiveTimeout although it was asked to answer: the connection is
// treated as broken, and the move reconnects.
type ErrSilent struct{ For time.Duration }

func (e *ErrSilent) Error() string {
	return fmt.Sprintf("the source sent nothing for %s although asked to answer: the network or the source is gone", e.For.Round(time.Millisecond))
}

// Silent marks the error as a broken connection, worth a retry.
func (e *ErrSilent) Silent() bool { return true }

// ErrEnded reports that the source ended the replication stream on its
// own, as a walsender does when its server shuts down: the move
// reconnects once the server is back.
type ErrEnded struct{}

func (e *ErrEnded) Error() string {
	return "the source ended the replication stream (shutting down or restarting)"
}

// Silent marks the error as a broken connection, worth a retry.
func (e *ErrEnded) Silent() bool { return true }

// Bind registers the stream's flags.
func (c *Config) Bind(fs *pflag.FlagSet) {
	fs.DurationVar(&c.StatusInterval, "status-interval", 5*time.Second, "longest interval between standby status updates to the source")
	fs.IntVar(&c.MaxTxnChanges, "max-txn-changes", 5000, "split source transactions larger than this into parts (committed whole on the target)")
	fs.DurationVar(&c.CommitDelay, "commit-delay", 2*time.Millisecond, "wait this long for another transaction before committing a group on the target")
}

// Validate fills defaults for zero values and refuses negative ones.
func (c *Config) Validate() error {
	switch {
	case c.StatusInterval < 0:
		return fmt.Errorf("--status-interval %s is negative: pass a duration such as 5s", c.StatusInterval)
	case c.MaxTxnChanges < 0:
		return fmt.Errorf("--max-txn-changes %d is negative: pass a number of changes such as 5000", c.MaxTxnChanges)
	case c.CommitDelay < 0:
		return fmt.Errorf("--commit-delay %s is negative: pass a duration such as 2ms, or 0", c.CommitDelay)
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = 5 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 200 * time.Millisecond
	}
	if c.MaxTxnChanges == 0 {
		c.MaxTxnChanges = 5000
	}
	if c.ReceiveTimeout <= 0 {
		c.ReceiveTimeout = 30 * time.Second
	}
	if c.MarkerPrefix == "" {
		c.MarkerPrefix = "promoted"
	}
	return nil
}

// Stream is one pgoutput session on a replication connection.
type Stream struct {
	cfg    Config
	conn   *pgconn.PgConn
	tables map[[2]string]*promoted.Table
	rels   map[uint32]*relation
	// pendRel holds Relation changes that arrived in a skipped
	// transaction, for the next one delivered.
	pendRel []promoted.Change
	filter  filter
	log     *slog.Logger
	metrics *metrics

	walEnd   atomic.Uint64 // the source's WAL end as last reported
	received atomic.Uint64 // end LSN of the last whole transaction received
}

// New prepares a stream; nothing runs until Run.
func New(cfg Config, conn *pgconn.PgConn, tables []*promoted.Table, log *slog.Logger) (*Stream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Slot == "" || cfg.Publication == "" {
		return nil, errors.New("stream: slot and publication are required")
	}
	s := &Stream{cfg: cfg, conn: conn, tables: map[[2]string]*promoted.Table{}, rels: map[uint32]*relation{}, log: log}
	for _, t := range tables {
		s.tables[[2]string{t.Schema, t.Name}] = t
	}
	if len(tables) > 0 {
		s.metrics = newMetrics(string(tables[0].TenantLiteral))
	} else {
		s.metrics = newMetrics("")
	}
	return s, nil
}

// ServerWALEnd is the source's WAL end as last reported by it; the
// difference to the sink's durable LSN is the lag.
func (s *Stream) ServerWALEnd() promoted.LSN { return promoted.LSN(s.walEnd.Load()) }

// Run streams from start (a durable end LSN, or the slot's consistent
// point) until ctx ends or an error stops it. Transactions whose commit
// record lies before start were applied already and are skipped. A stop
// through ctx returns nil once everything handed to the sink has been
// flushed and the durable position acknowledged.
func (s *Stream) Run(ctx context.Context, start promoted.LSN, sink promoted.Sink) error {
	err := pglogrepl.StartReplication(ctx, s.conn, s.cfg.Slot, start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names " + promoted.QuoteLiteral(s.cfg.Publication), "messages 'true'"},
	})
	if err != nil {
		return fmt.Errorf("start replication on slot %s: %w", s.cfg.Slot, err)
	}
	s.log.Info("streaming", "from", start.String())
	// Room for the decoder to run ahead while the sink waits on the
	// target: at most this many transactions (or parts of at most
	// MaxTxnChanges changes) are held in memory.
	ch := make(chan *promoted.Txn, 64)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.receive(gctx, start, sink, ch) })
	g.Go(func() error { return s.deliver(gctx, sink, ch) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	// A last acknowledgement of what is durable, so a clean stop leaves the
	// slot exactly at the target's position.
	if ackErr := s.sendStatus(sink.Durable(), false); err == nil && ackErr != nil && !s.conn.IsClosed() {
		err = ackErr
	}
	return err
}

// deliver applies transactions in order and commits a group whenever the
// queue runs dry, so a busy stream commits many transactions at once and a
// quiet one commits each promptly.
func (s *Stream) deliver(ctx context.Context, sink promoted.Sink, ch <-chan *promoted.Txn) error {
	var next *promoted.Txn
	for {
		txn := next
		next = nil
		if txn == nil {
			select {
			case <-ctx.Done():
				return s.flushOnStop(sink, ctx.Err())
			case txn = <-ch:
			}
		}
		if err := sink.Apply(ctx, txn); err != nil {
			return err
		}
		if txn.Partial || len(ch) > 0 {
			continue
		}
		if s.cfg.CommitDelay > 0 {
			select {
			case next = <-ch:
				continue
			case <-ctx.Done():
				return s.flushOnStop(sink, ctx.Err())
			case <-time.After(s.cfg.CommitDelay):
			}
		}
		if err := sink.Flush(ctx); err != nil {
			return err
		}
	}
}

// flushOnStop makes what was applied durable when the stream is stopped on
// purpose; the sink commits only whole transactions, so this is safe.
func (s *Stream) flushOnStop(sink promoted.Sink, cause error) error {
	fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sink.Flush(fctx); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

func (s *Stream) sendStatus(durable promoted.LSN, reply bool) error {
	if durable == 0 {
		return nil
	}
	// write = flush = apply = durable: pglogrepl copies Write into Flush
	// when Flush is zero, and only Flush moves a logical slot.
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: durable, WALFlushPosition: durable, WALApplyPosition: durable, ReplyRequested: reply,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.metrics.acked.Set(float64(durable))
	return nil
}

// receive reads the replication connection. It is the only goroutine that
// touches the connection.
func (s *Stream) receive(ctx context.Context, start promoted.LSN, sink promoted.Sink, out chan<- *promoted.Txn) error {
	var (
		txn   *promoted.Txn
		skip  bool
		inTxn bool
		// parts is set once a leading part of the open transaction went
		// to the sink: its last part must follow even when empty, or the
		// sink's open group would never complete.
		parts         bool
		nextStatus    = time.Now().Add(s.cfg.StatusInterval)
		lastHeartbeat time.Time
		// heard is when the source last sent anything (or when the stream
		// last stopped reading to wait for the sink).
		heard = time.Now()
		// deadline is the socket's read deadline.
		deadline time.Time
		// lastPushed is the end of the last transaction handed to the sink.
		lastPushed = start
	)
	stopRead := context.AfterFunc(ctx, func() { s.conn.Conn().SetReadDeadline(time.Now()) })
	defer stopRead()
	defer s.conn.Conn().SetReadDeadline(time.Time{})
	push := func(t *promoted.Txn) error {
		defer func() { heard = time.Now() }()
		for {
			select {
			case out <- t:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Until(nextStatus)):
				if err := s.sendStatus(sink.Durable(), false); err != nil {
					return err
				}
				nextStatus = time.Now().Add(s.cfg.StatusInterval)
			}
		}
	}
	// heartbeat tells the sink that nothing of the tenant is pending before
	// lsn, when everything handed to it is durable already: the sink records
	// lsn as progress and the slot advances although the tenant is quiet
	// (docs/hazards.md 5.3). Acknowledging lsn without recording it first would
	// let the slot pass the target (invariant 4).
	heartbeat := func(lsn promoted.LSN) error {
		d := sink.Durable()
		if d < lastPushed || lsn <= d || time.Since(lastHeartbeat) < s.cfg.HeartbeatInterval {
			return nil
		}
		lastHeartbeat = time.Now()
		lastPushed = lsn
		return push(&promoted.Txn{EndLSN: lsn})
	}
	for {
		if time.Now().After(nextStatus) {
			// Ask for a reply: a source that stays silent after this is
			// unreachable (ReceiveTimeout).
			if err := s.sendStatus(sink.Durable(), true); err != nil {
				return err
			}
			nextStatus = time.Now().Add(s.cfg.StatusInterval)
		}
		if silence := time.Since(heard); silence > s.cfg.ReceiveTimeout {
			return &ErrSilent{For: silence}
		}
		// A read deadline on the socket, not a context per message: a
		// context makes pgconn watch it for every message, which cost
		// more than decoding the message. stopRead ends the wait when ctx
		// does.
		if !nextStatus.Equal(deadline) {
			deadline = nextStatus
			s.conn.Conn().SetReadDeadline(deadline)
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		msg, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive from slot %s: %w", s.cfg.Slot, err)
		}
		heard = time.Now()
		var data []byte
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			data = m.Data
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyDone, *pgproto3.CommandComplete:
			// The walsender ended the stream: the source is shutting down.
			return &ErrEnded{}
		default:
			return fmt.Errorf("replication stream: unexpected message %T", msg)
		}
		if len(data) == 0 {
			continue
		}
		switch data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			s.setWALEnd(ka.ServerWALEnd)
			// Everything before ServerWALEnd has been sent.
			if !inTxn {
				if err := heartbeat(ka.ServerWALEnd); err != nil {
					return err
				}
			}
			// Answer every keepalive (not only those asking for a reply):
			// the walsender sends the next one only after an answer, and
			// keepalives are what move a quiet tenant's slot.
			if err := s.sendStatus(sink.Durable(), false); err != nil {
				return err
			}
			nextStatus = time.Now().Add(s.cfg.StatusInterval)
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(data[1:])
			if err != nil {
				return fmt.Errorf("parse xlogdata: %w", err)
			}
			s.setWALEnd(xld.ServerWALEnd)
			s.metrics.bytes.Add(float64(len(xld.WALData)))
			lm, err := parseMessage(xld.WALData)
			if err != nil {
				return fmt.Errorf("parse pgoutput message at %s: %w", xld.WALStart, err)
			}
			switch m := lm.(type) {
			case *pglogrepl.RelationMessage:
				t, ok := s.tables[[2]string{m.Namespace, m.RelationName}]
				if !ok {
					return fmt.Errorf("the stream carries table %s.%s, which this move does not include: the publication was altered; cancel the move and start again", m.Namespace, m.RelationName)
				}
				next, changed, err := s.relationChange(ctx, m, t)
				if err != nil {
					return err
				}
				r, err := mapRelation(m, next)
				if err != nil {
					return err
				}
				s.rels[m.RelationID] = r
				if changed {
					s.tables[[2]string{m.Namespace, m.RelationName}] = next
					rc := promoted.Change{Op: promoted.Relation, Table: next, LSN: xld.WALStart}
					// pgoutput sends a Relation message once per session,
					// inside the first transaction that uses it: when that
					// one is skipped, the next one delivered carries it.
					if skip || txn == nil {
						s.pendRel = append(s.pendRel, rc)
					} else {
						txn.Changes = append(txn.Changes, rc)
					}
				}
			case *pglogrepl.BeginMessage:
				inTxn = true
				// A transaction whose commit record starts before the resume
				// point was applied before the restart (docs/hazards.md 5.5).
				skip = m.FinalLSN < start
				parts = false
				txn = &promoted.Txn{Xid: m.Xid, FinalLSN: m.FinalLSN, BeginLSN: xld.WALStart, CommitTime: m.CommitTime}
				if !skip && len(s.pendRel) > 0 {
					txn.Changes, s.pendRel = s.pendRel, nil
				}
			case *pglogrepl.CommitMessage:
				inTxn = false
				if txn == nil {
					return fmt.Errorf("commit at %s without begin", m.CommitLSN)
				}
				if m.CommitLSN != txn.FinalLSN {
					return fmt.Errorf("commit LSN %s does not match begin's final LSN %s", m.CommitLSN, txn.FinalLSN)
				}
				txn.EndLSN = m.TransactionEndLSN
				done := txn
				txn = nil
				if skip {
					s.metrics.skipped.Inc()
					continue
				}
				s.received.Store(uint64(done.EndLSN))
				s.metrics.txns.Inc()
				if len(done.Changes) == 0 && !parts {
					// Filtered to nothing (another tenant's rows of a table the
					// daemon filters): no target commit, only progress.
					if err := heartbeat(done.EndLSN); err != nil {
						return err
					}
					continue
				}
				lastPushed = done.EndLSN
				if err := push(done); err != nil {
					return err
				}
			case *pglogrepl.TruncateMessage:
				if skip {
					continue
				}
				names := make([]string, 0, len(m.RelationIDs))
				for _, id := range m.RelationIDs {
					if r, ok := s.rels[id]; ok {
						names = append(names, r.table.String())
					}
				}
				return &ErrTruncate{Tables: names, LSN: xld.WALStart}
			case *pglogrepl.InsertMessage, *pglogrepl.UpdateMessage, *pglogrepl.DeleteMessage:
				if skip {
					continue
				}
				if txn == nil {
					return fmt.Errorf("row change at %s outside a transaction", xld.WALStart)
				}
				c, err := s.change(lm)
				if err != nil {
					return err
				}
				if c == nil {
					continue
				}
				c.LSN = xld.WALStart
				txn.Changes = append(txn.Changes, *c)
				if len(txn.Changes) >= s.cfg.MaxTxnChanges {
					part := *txn
					part.Partial = true
					txn.Changes = nil
					parts = true
					if err := push(&part); err != nil {
						return err
					}
				}
			case *pglogrepl.LogicalDecodingMessage:
				if skip || !m.Transactional || m.Prefix != s.cfg.MarkerPrefix || txn == nil {
					continue
				}
				// Content aliases the receive buffer (docs/hazards.md 2.5).
				content := append([]byte(nil), m.Content...)
				s.log.Debug("marker received", "lsn", xld.WALStart.String())
				txn.Changes = append(txn.Changes, promoted.Change{Op: promoted.Message, Content: content})
			case *pglogrepl.TypeMessage, *pglogrepl.OriginMessage:
			default:
				return fmt.Errorf("unsupported pgoutput message %T at %s", lm, xld.WALStart)
			}
		}
	}
}

func (s *Stream) change(lm pglogrepl.Message) (*promoted.Change, error) {
	var relID uint32
	switch m := lm.(type) {
	case *pglogrepl.InsertMessage:
		relID = m.RelationID
	case *pglogrepl.UpdateMessage:
		relID = m.RelationID
	case *pglogrepl.DeleteMessage:
		relID = m.RelationID
	}
	r, ok := s.rels[relID]
	if !ok {
		return nil, fmt.Errorf("row change for relation %d before its Relation message", relID)
	}
	var (
		c   *promoted.Change
		err error
	)
	switch m := lm.(type) {
	case *pglogrepl.InsertMessage:
		c, err = s.filter.insert(r, m)
	case *pglogrepl.UpdateMessage:
		c, err = s.filter.update(r, m)
	case *pglogrepl.DeleteMessage:
		c, err = s.filter.delete(r, m)
	}
	if c != nil && int(c.Op) < len(s.metrics.changes) && s.metrics.changes[c.Op] != nil {
		s.metrics.changes[c.Op].Inc()
	}
	return c, err
}

func (s *Stream) setWALEnd(l promoted.LSN) {
	if uint64(l) > s.walEnd.Load() {
		s.walEnd.Store(uint64(l))
		s.metrics.walEnd.Set(float64(l))
	}
}
