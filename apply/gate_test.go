package apply

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/promoted/promoted"
)

// fakeSink records what passes the gate; Flush makes it durable.
type fakeSink struct {
	mu      sync.Mutex
	applied []promoted.LSN // EndLSN of each transaction applied
	pending promoted.LSN
	durable promoted.LSN
}

func (f *fakeSink) Apply(_ context.Context, t *promoted.Txn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, t.EndLSN)
	f.pending = t.EndLSN
	return nil
}

func (f *fakeSink) Flush(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.durable = f.pending
	return nil
}

func (f *fakeSink) Durable() promoted.LSN {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.durable
}

func (f *fakeSink) got() []promoted.LSN {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]promoted.LSN(nil), f.applied...)
}

func txn(final, end promoted.LSN) *promoted.Txn {
	return &promoted.Txn{Xid: uint32(final), FinalLSN: final, EndLSN: end, Changes: []promoted.Change{{Op: promoted.Insert}}}
}

// applyAsync applies txns in order on another goroutine, as the stream
// does, and reports each result.
func applyAsync(ctx context.Context, g *Gate, txns ...*promoted.Txn) <-chan error {
	out := make(chan error, len(txns))
	go func() {
		for _, t := range txns {
			out <- g.Apply(ctx, t)
		}
	}()
	return out
}

func within(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestGateStopsExactlyAtThePoint holds the apply, learns the point, lets
// every transaction that committed before it through, makes them
// durable, and holds the first at or after it until Resume. Those are the
// gate's states: open, holding everything, holding at a point, released.
func TestGateStopsExactlyAtThePoint(t *testing.T) {
	ctx := context.Background()
	sink := &fakeSink{}
	g := NewGate(sink)
	if err := g.Apply(ctx, txn(10, 11)); err != nil { // open: passes
		t.Fatal(err)
	}
	g.Hold()
	results := applyAsync(ctx, g, txn(20, 21), txn(30, 31), txn(40, 41), txn(50, 51))
	time.Sleep(50 * time.Millisecond)
	if got := sink.got(); len(got) != 1 {
		t.Fatalf("applied %v while held without a point, want only the first", got)
	}
	reached := g.StopAt(35)
	within(t, reached, "the point")
	if got := sink.got(); len(got) != 3 || got[2] != 31 {
		t.Fatalf("applied %v at the point 35, want every transaction that committed before it (ends 11, 21, 31)", got)
	}
	if d := sink.Durable(); d != 31 {
		t.Fatalf("durable %s at the point, want 0/1F: what committed before the point must be durable before it is compared", d)
	}
	time.Sleep(50 * time.Millisecond)
	if got := sink.got(); len(got) != 3 {
		t.Fatalf("applied %v before Resume, want nothing past the point", got)
	}
	g.Resume()
	for i := 0; i < 4; i++ {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if got := sink.got(); len(got) != 5 {
		t.Fatalf("applied %v after Resume, want all five", got)
	}
	if err := g.Apply(ctx, txn(60, 61)); err != nil { // open again
		t.Fatal(err)
	}
}

// A heartbeat (no change, only progress) before the point passes; one that
// reaches it proves the point was passed on a quiet stream, and is not
// applied twice after the release.
func TestGateHeartbeats(t *testing.T) {
	ctx := context.Background()
	sink := &fakeSink{}
	g := NewGate(sink)
	g.Hold()
	reached := g.StopAt(100)
	results := applyAsync(ctx, g, &promoted.Txn{EndLSN: 90}, &promoted.Txn{EndLSN: 120})
	within(t, reached, "the point, on heartbeats alone")
	g.Resume()
	for i := 0; i < 2; i++ {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if got := sink.got(); len(got) != 2 || got[0] != 90 || got[1] != 120 {
		t.Fatalf("applied %v, want the two heartbeats once each", got)
	}
}

// Resume without a point releases a held apply; a cancelled context ends
// a wait with the context's error.
func TestGateReleaseAndCancel(t *testing.T) {
	sink := &fakeSink{}
	g := NewGate(sink)
	g.Hold()
	results := applyAsync(context.Background(), g, txn(10, 11))
	time.Sleep(20 * time.Millisecond)
	g.Resume()
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	g.Hold()
	ctx, cancel := context.WithCancel(context.Background())
	results = applyAsync(ctx, g, txn(20, 21))
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-results; !errors.Is(err, context.Canceled) {
		t.Fatalf("a held apply whose context ended returned %v", err)
	}
	g.Resume()
	if got := sink.got(); len(got) != 1 {
		t.Fatalf("applied %v, want only the released transaction", got)
	}
}
