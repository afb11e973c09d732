package job

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/promoted/promoted/cutover"
)

// TestFenceRechecksOnlyTheLastWrites writes every order of the tenant
// after the full verification before the fence. Those keys are re-checked
// before the fence is armed, at a new consistent point, and the check under
// the fence covers only what was written after that point (here nothing),
// so the blocked time stays flat however long the catch-up after the full
// verification took (issue 10, target 4).
func TestFenceRechecksOnlyTheLastWrites(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.cfg.Cutover.FenceCheck = cutover.CheckChanged
	var written int64
	p.job.Hooks.Verified = func() {
		written = queryOne[int64](t, ctx, p.src.App, `WITH u AS (UPDATE orders SET note = 'after the verification' WHERE tenant_id = 1 RETURNING 1) SELECT count(*) FROM u`)
	}
	if err := p.job.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if written < 50 {
		t.Fatalf("only %d orders written after the verification: the test proves nothing", written)
	}
	sum := p.job.Summary()
	var rechecked int64
	for _, r := range sum.Rounds {
		if !r.Equal() {
			t.Errorf("a re-check before the fence differs: %s", r.Summary())
		}
		rechecked += r.Rows
	}
	if rechecked < written {
		t.Errorf("%d rows re-checked before the fence, want at least the %d written after the full verification", rechecked, written)
	}
	if v := sum.Cutover.Verify; v == nil || v.Rows >= written/2 {
		t.Fatalf("under the fence %v rows were re-checked; want only those written since the last re-check (far fewer than %d)", v, written)
	}
	t.Logf("%d rows written after the verification, %d re-checked in %d rounds before the fence, %d under it", written, rechecked, len(sum.Rounds), sum.Cutover.Verify.Rows)
	compareTenant(t, ctx, p.srcDSN, p.dstDSN, "public", p.dstSchema, "1", movedTables)
}

// TestLostUpdateBeforeTheRecheck loses one update made after the full
// verification and before the re-check that narrows the fence's window:
// that re-check must find it and stop the move before the fence.
func TestLostUpdateBeforeTheRecheck(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.cfg.Cutover.FenceCheck = cutover.CheckChanged
	lost := loseTheLostUpdate(p)
	armed := false
	p.job.Hooks.Cutover.BeforeArm = func() { armed = true }
	p.job.Hooks.Verified = func() { writeLostUpdate(t, ctx, p) }
	err := p.job.Run(ctx)
	checkLostUpdateRefused(t, ctx, p, lost, err)
	if armed {
		t.Error("the fence was armed although the re-check before it had found a difference")
	}
}

// countingHandler counts the log records with one message.
type countingHandler struct {
	msg string
	n   *atomic.Int64
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// TestWaitingForTheLagDoesNotSpin holds a promotion before its cutover
// with a --max-lag no stream can meet while the tenant writes: the wait
// must look again at a pace, and say so about once a second, not spin on
// the source and the log.
func TestWaitingForTheLagDoesNotSpin(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.cfg.Cutover.MaxLag = 1
	var n atomic.Int64
	p.job.log = slog.New(countingHandler{msg: "waiting for the lag to allow the cutover", n: &n})
	stop := load(t, ctx, p.src.App, []int{1}, 2)
	defer stop()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.job.Run(rctx) }()
	waitCatchup(t, p.job, done)
	time.Sleep(3 * time.Second)
	cancel()
	<-done
	if got := n.Load(); got > 10 {
		t.Errorf("%d waiting lines in about 3 s: the wait spins", got)
	}
	t.Logf("%d waiting lines", n.Load())
}
