package job

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/verify"
)

// TestCopyCheckCatchesACorruptCopy damages the target after the copy, while
// its keys are built (one order changed, one event gone): the copy's
// check, the source totalled under the copy's snapshot, must find both,
// name their keys, and stop the move before it streams, leaving nothing on
// the source (no slot, no tracking) and the catalog unchanged; the same
// command run again copies the tenant anew and flips.
func TestCopyCheckCatchesACorruptCopy(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	var streamed atomic.Bool
	p.job.Hooks.Streaming = func() { streamed.Store(true) }
	// The application, reaching the target before the flip, damages it.
	p.job.Hooks.AfterKeys = func() {
		mustExec(t, ctx, p.dst.App, `UPDATE orders SET note = 'damaged' WHERE tenant_id = 1 AND id = (SELECT min(id) FROM orders WHERE tenant_id = 1)`)
		mustExec(t, ctx, p.dst.App, `DELETE FROM events WHERE tenant_id = 1 AND id = (SELECT max(id) FROM events WHERE tenant_id = 1)`)
	}
	order := queryOne[int64](t, ctx, p.src.Mover, `SELECT min(id) FROM orders WHERE tenant_id = 1`)
	event := queryOne[int64](t, ctx, p.src.Mover, `SELECT max(id) FROM events WHERE tenant_id = 1`)
	err := p.job.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "the copy differs from the source at its snapshot") {
		t.Fatalf("promote of a damaged copy: %v, want the copy's check to stop it", err)
	}
	t.Logf("refusal: %v", err)
	for _, want := range []string{fmt.Sprintf("(1,%d)", order), fmt.Sprintf("(%d)", event), "different", "missing from the target"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not name %q", want)
		}
	}
	if streamed.Load() {
		t.Error("the move streamed although its copy differed")
	}
	if v := queryOne[int64](t, ctx, p.src.Mover, `SELECT version FROM promoted.tenant_catalog WHERE tenant_id = '1'`); v != 1 {
		t.Errorf("catalog version %d after the refusal, want 1", v)
	}
	if n := queryOne[int64](t, ctx, p.src.Mover, `SELECT count(*) FROM promoted.fence`); n != 0 {
		t.Errorf("%d fence rows (tracking) left after the refusal", n)
	}
	if n := queryOne[int64](t, ctx, p.src.Mover, `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'promoted%'`); n != 0 {
		t.Errorf("%d slots left on the source after the refusal", n)
	}
	// The same command again copies the tenant anew, over what the
	// failed run left on the target, and flips.
	again, err := New(p.job.cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Run(ctx); err != nil {
		t.Fatalf("rerun after the refusal: %v", err)
	}
	compareTenant(t, ctx, p.src.Mover, p.dst.Mover, "public", p.dstSchema, "1", movedTables)
}

// TestCopyCheckCoversWritesDuringTheCopy updates a customer while the copy
// runs, and the sink loses that update. The copy's check compares the copy
// at its snapshot, which is before the update, so it finds nothing; the
// source's own record of the rows written since must bring the row to the
// re-check before the fence, which refuses to flip, without any full
// verification at a later consistent point.
func TestCopyCheckCoversWritesDuringTheCopy(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	lost := loseTheLostUpdate(p)
	var once sync.Once
	chunk := p.job.Hooks.AfterChunk
	p.job.Hooks.AfterChunk = func(table string) {
		once.Do(func() {
			mustExec(t, ctx, p.src.App, `UPDATE customers SET name = 'lost update' WHERE tenant_id = 1 AND id = (SELECT min(id) FROM customers WHERE tenant_id = 1)`)
		})
		chunk(table)
	}
	var full atomic.Int64
	p.job.log = slog.New(countingHandler{msg: "verifying at a consistent point", n: &full})
	armed := false
	p.job.Hooks.Cutover.BeforeArm = func() { armed = true }
	err := p.job.Run(ctx)
	checkLostUpdateRefused(t, ctx, p, lost, err)
	if armed {
		t.Error("the fence was armed although the re-check before it had found a difference")
	}
	if n := full.Load(); n != 0 {
		t.Errorf("%d full verifications at a consistent point: the copy's check should have made them unneeded", n)
	}
	if !strings.Contains(err.Error(), "customers") {
		t.Errorf("the refusal does not name the customers table: %v", err)
	}
}

// TestCopyCheckThenLoadMatchesRowByRow promotes under writers on the tenant
// and its neighbours from before the copy to the flip, with the copy's
// check and re-checks by key only, and compares every row afterwards.
func TestCopyCheckThenLoadMatchesRowByRow(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	stop := load(t, ctx, p.src.App, []int{1, 2}, 2)
	var full atomic.Int64
	p.job.log = slog.New(countingHandler{msg: "verifying at a consistent point", n: &full})
	err := p.job.Run(ctx)
	stop()
	if err != nil {
		t.Fatal(err)
	}
	if n := full.Load(); n != 0 {
		t.Errorf("%d full verifications at a consistent point after the copy's check", n)
	}
	sum := p.job.Summary()
	if sum.Cutover == nil || sum.Cutover.PreVerify == nil || !sum.Cutover.PreVerify.Equal() || sum.Cutover.PreVerify.Rows == 0 {
		t.Fatalf("no copy check recorded in the summary: %+v", sum.Cutover)
	}
	var rechecked int64
	for _, r := range sum.Rounds {
		rechecked += r.Rows
	}
	t.Logf("copy checked %d rows; %d re-checked in %d rounds before the fence", sum.Cutover.PreVerify.Rows, rechecked, len(sum.Rounds))
	if len(sum.Rounds) == 0 {
		t.Error("no re-check before the fence of the rows written during the copy")
	}
	compareTenant(t, ctx, p.src.Mover, p.dst.Mover, "public", p.dstSchema, "1", movedTables)
}

// A re-check compares everything when the rows written and applied since
// the last check reach a tenth of the tenant (and ten thousand), or when
// the sink could not keep every key it applied; else only those rows.
func TestWholeRecheckWhenTooManyWritten(t *testing.T) {
	j := &Job{preVerified: &verify.Result{Rows: 1_000_000}}
	keys := apply.Touched{Keys: map[*promoted.Table][][]string{{}: make([][]string, 30_000)}}
	for _, tc := range []struct {
		written int64
		touched apply.Touched
		whole   bool
	}{
		{written: 50_000, touched: keys, whole: false},
		{written: 80_000, touched: keys, whole: true},
		{written: 0, touched: apply.Touched{Overflow: true}, whole: true},
		{written: 0, touched: apply.Touched{Whole: map[*promoted.Table]bool{{}: true}}, whole: true},
	} {
		if got := j.wholeRecheck(tc.written, tc.touched); got != tc.whole {
			t.Errorf("%d written, %d applied (overflow %v): whole %v, want %v", tc.written, tc.touched.Len(), tc.touched.Overflow, got, tc.whole)
		}
	}
	small := &Job{preVerified: &verify.Result{Rows: 5_000}}
	if small.wholeRecheck(9_000, apply.Touched{}) {
		t.Error("a small tenant's 9,000 written rows are re-checked whole: the floor of ten thousand is missing")
	}
}

// TestStoppedMoveRecordsNothing stops a promotion during its catch-up (a
// --max-lag no stream meets) while the tenant writes: the keys recorded for
// the copy's check must stop being recorded when the process stops, since
// the next run cannot use them.
func TestStoppedMoveRecordsNothing(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	p.job.cfg.Cutover.MaxLag = 1
	stop := load(t, ctx, p.src.App, []int{1}, 1)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.job.Run(rctx) }()
	waitCatchup(t, p.job, done)
	if n := queryOne[int64](t, ctx, p.src.Mover, `SELECT count(*) FROM promoted.fence WHERE NOT armed`); n != 1 {
		t.Fatalf("%d tracking rows while the move runs, want 1", n)
	}
	stop() // no write in flight across the stop
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("stop: %v", err)
	}
	if n := queryOne[int64](t, ctx, p.src.Mover, `SELECT count(*) FROM promoted.fence`); n != 0 {
		t.Errorf("%d fence rows after the move stopped, want none", n)
	}
	mustExec(t, ctx, p.src.App, `UPDATE customers SET name = 'after the stop' WHERE tenant_id = 1`)
	if n := queryOne[int64](t, ctx, p.src.Mover, `SELECT count(*) FROM promoted.changed`); n != 0 {
		t.Errorf("%d keys recorded after the move stopped, want none", n)
	}
}
