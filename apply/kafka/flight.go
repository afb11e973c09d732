package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"syscall"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
)

// The flush is pipelined: while one batch is in flight, the next is
// encoded, so the sink neither encodes while the broker idles nor waits
// for acks with nothing to do. A batch is handed over only once the
// previous one is wholly acknowledged, and within it each partition's
// record sets go one produce request at a time, in order; after a failed
// request its partition writes nothing more, the other partitions start no
// new request, and no later batch is written. So every partition holds a
// prefix of its records (what Resume relies on), and Durable, which
// advances as sets are acknowledged, only ever passes a transaction all of
// whose records, in every partition, the broker acknowledged (invariant 4).

// flight is a batch being written.
type flight struct {
	b *batch
	g errgroup.Group
	// done is closed once every partition's sender has returned.
	done   chan struct{}
	cancel context.CancelFunc
	// failed stops the other partitions after a failed request.
	failed atomic.Bool
	start  time.Time
}

// handoff starts writing the current batch, once the previous one is
// acknowledged, and starts a new one for the records that follow. The
// batch's partitions are written by goroutines of the flight's errgroup,
// under a context that outlives ctx (a stream stopping on purpose still
// flushes what it handed over) until Close or a failure ends it.
func (s *Sink) handoff(ctx context.Context) error {
	b := s.cur
	if s.snap.started {
		b.snapDone = s.snapDone()
	}
	if b.n == 0 && b.settled == len(b.marks) && b.snapDone <= s.snap.done {
		return nil
	}
	if err := s.wait(ctx); err != nil {
		return err
	}
	if b.n == 0 {
		// Nothing to write: what it completes is complete now.
		b.settle(s.setDurable)
		b.marks, b.settled = b.marks[:0], 0
		s.completed(b)
		return nil
	}
	s.cur = newBatch()
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &flight{b: b, done: make(chan struct{}), cancel: cancel, start: time.Now()}
	// Transactions that ended before the batch's first record (quiet
	// heartbeats) are durable now that the previous batch is.
	b.settle(s.setDurable)
	var left atomic.Int32
	left.Store(int32(len(b.parts)))
	for _, p := range b.parts {
		f.g.Go(func() error {
			defer func() {
				if left.Add(-1) == 0 {
					close(f.done)
				}
			}()
			return s.send(fctx, f, p)
		})
	}
	s.flight = f
	return nil
}

// send writes one partition's record sets in order, each once the one
// before it is acknowledged, and advances Durable as they are.
func (s *Sink) send(ctx context.Context, f *flight, p *partRecs) error {
	for _, rs := range p.sets {
		if f.failed.Load() {
			return nil
		}
		rs.finish(time.Now())
		clean, err := s.produce(ctx, p.topic, p.partition, rs)
		if err != nil {
			f.failed.Store(true)
			return fmt.Errorf("write %s partition %d: %w", p.topic, p.partition, err)
		}
		s.m.records.Add(float64(rs.count))
		s.m.bytes.Add(float64(rs.kv))
		s.m.batches.Inc()
		f.b.mu.Lock()
		p.acked++
		f.b.settle(s.setDurable)
		f.b.mu.Unlock()
		if clean {
			// A request that was retried may still be read by the
			// connection it timed out on: only a buffer sent once is reused.
			s.pool.put(rs.buf)
		}
		rs.buf = nil
	}
	return nil
}

// produce sends one record set with acks=all, retrying as kafka-go's
// writer does (s.attempts tries, on temporary and transient network
// errors, with the same backoff). clean says it took one attempt.
func (s *Sink) produce(ctx context.Context, topic string, partition int, rs *recordSet) (clean bool, err error) {
	for attempt := 0; attempt < s.attempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return false, ctx.Err()
			case <-time.After(min(time.Duration(attempt*attempt)*100*time.Millisecond, time.Second)):
			}
		}
		var res *kafkago.ProduceResponse
		res, err = s.client.RawProduce(ctx, &kafkago.RawProduceRequest{Topic: topic, Partition: partition,
			RequiredAcks: kafkago.RequireAll, RawRecords: protocol.RawRecordSet{Reader: bytes.NewReader(rs.buf)}})
		if err == nil && res != nil {
			err = res.Error
			for i, e := range res.RecordErrors {
				if err == nil {
					err = fmt.Errorf("record %d: %w", i, e)
				}
			}
		}
		if err == nil {
			return attempt == 0, nil
		}
		if !retriable(err) {
			return false, err
		}
	}
	return false, err
}

// retriable is kafka-go's writer's test for retrying a produce request.
func retriable(err error) bool {
	var temp interface{ Temporary() bool }
	if errors.As(err, &temp) && temp.Temporary() {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// wait waits until the batch in flight, if any, is written, and breaks
// the sink if it failed.
func (s *Sink) wait(ctx context.Context) error {
	f := s.flight
	if f == nil {
		return nil
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return s.fail(fmt.Errorf("wait for the broker's acknowledgements: %w", ctx.Err()))
	}
	err := f.g.Wait()
	f.cancel()
	s.flight = nil
	s.m.flushSeconds.Observe(time.Since(f.start).Seconds())
	if err != nil {
		return s.fail(err)
	}
	s.completed(f.b)
	return nil
}

// reap finishes with the batch in flight if it is written already.
func (s *Sink) reap(ctx context.Context) error {
	if f := s.flight; f != nil {
		select {
		case <-f.done:
			return s.wait(ctx)
		default:
		}
	}
	return nil
}

// Flush writes everything encoded and waits for the broker's acks=all.
// Durable then covers every whole transaction handed over so far.
func (s *Sink) Flush(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	if err := s.handoff(ctx); err != nil {
		return err
	}
	return s.wait(ctx)
}

// Close stops a write in flight and releases the producer's connections.
// Records not acknowledged are dropped (they were never durable).
func (s *Sink) Close() error {
	if f := s.flight; f != nil {
		f.cancel()
		<-f.done
		f.g.Wait()
		s.flight = nil
	}
	s.transport.CloseIdleConnections()
	return nil
}

func (s *Sink) setDurable(end promoted.LSN) {
	for {
		cur := s.durable.Load()
		if uint64(end) <= cur {
			return
		}
		if s.durable.CompareAndSwap(cur, uint64(end)) {
			s.m.durable.Set(float64(end))
			return
		}
	}
}
