package apply

import (
	"context"
	"sync"

	"github.com/promoted/promoted"
)

// Gate sits between the stream and a sink so live
// verification can stop the apply exactly at an LSN: every transaction
// that committed before it is applied and durable, none after it is. It
// holds the apply first and learns the point afterwards, because the point
// (a new slot's consistent point) lies after every transaction the stream
// has already received, and the target must not run past it meanwhile.
type Gate struct {
	sink promoted.Sink

	mu      sync.Mutex
	at      promoted.LSN  // 0: open; holdAll: hold until the point is known
	updated chan struct{} // closed when at changes from holdAll
	reached chan struct{}
	release chan struct{}
}

const holdAll = promoted.LSN(^uint64(0))

// NewGate puts a gate, open, in front of sink.
func NewGate(sink promoted.Sink) *Gate { return &Gate{sink: sink} }

// Flush makes what the sink holds durable.
func (g *Gate) Flush(ctx context.Context) error { return g.sink.Flush(ctx) }

// Durable is the sink's durable position.
func (g *Gate) Durable() promoted.LSN { return g.sink.Durable() }

// Apply holds back the first transaction that committed at or after the
// pause point, after making everything before it durable.
func (g *Gate) Apply(ctx context.Context, txn *promoted.Txn) error {
	for {
		g.mu.Lock()
		at, updated, reached, release := g.at, g.updated, g.reached, g.release
		g.mu.Unlock()
		switch {
		case at == 0:
			return g.sink.Apply(ctx, txn)
		case at == holdAll:
			select {
			case <-updated:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if txn.Heartbeat() {
			// Nothing of the tenant before EndLSN: once that reaches the
			// point the target holds exactly the tenant's state there.
			if err := g.sink.Apply(ctx, txn); err != nil || txn.EndLSN < at {
				return err
			}
		} else if txn.FinalLSN < at {
			return g.sink.Apply(ctx, txn)
		}
		if err := g.sink.Flush(ctx); err != nil {
			return err
		}
		select {
		case <-reached:
		default:
			close(reached)
		}
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		if txn.Heartbeat() {
			return nil
		}
		return g.sink.Apply(ctx, txn)
	}
}

// Hold stops the apply before its next transaction until StopAt or
// Resume.
func (g *Gate) Hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.at, g.updated, g.reached, g.release = holdAll, make(chan struct{}), make(chan struct{}), make(chan struct{})
}

// StopAt lets the apply run up to lsn; the returned channel closes when
// it is there: every transaction that committed before lsn is durable,
// none after it is applied.
func (g *Gate) StopAt(lsn promoted.LSN) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.at = lsn
	close(g.updated)
	return g.reached
}

// Resume opens the gate again.
func (g *Gate) Resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.at == holdAll {
		close(g.updated)
	}
	if g.release != nil {
		close(g.release)
	}
	g.at, g.updated, g.reached, g.release = 0, nil, nil, nil
}
