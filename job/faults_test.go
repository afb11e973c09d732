package job

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/promoted/promoted/testenv"
)

// faulty is a move whose source or target (or both) promoted reaches
// through a fault-injecting proxy, with timeouts short enough for a test.
type faulty struct {
	src, dst       testenv.TenantDB
	srcProxy       *testenv.Proxy
	dstProxy       *testenv.Proxy
	cfg            Config
	done           chan error
	stopLoad       func() []*testenv.Writer
	srcC, dstC     *testenv.Cluster
	loadCancelled  bool
	retriesAtStart float64
}

func newFaulty(t *testing.T, srcC, dstC *testenv.Cluster, viaSource, viaTarget bool) *faulty {
	t.Helper()
	f := &faulty{src: srcC.NewSaaS(t, 40, 2), dst: dstC.NewTenantDB(t), srcC: srcC, dstC: dstC}
	srcDSN, dstDSN := f.src.Mover, f.dst.Mover
	if viaSource {
		p, err := srcC.ProxyFor()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		f.srcProxy, srcDSN = p, p.DSN(srcDSN)
	}
	if viaTarget {
		p, err := dstC.ProxyFor()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		f.dstProxy, dstDSN = p, p.DSN(dstDSN)
	}
	f.cfg = Config{SourceDSN: srcDSN, TargetDSN: dstDSN, Tenant: "1", Tables: movedTables, RetryFor: time.Minute}
	f.cfg.Stream.StatusInterval = 200 * time.Millisecond
	f.cfg.Stream.ReceiveTimeout = 2 * time.Second
	f.cfg.Apply.Timeout = 3 * time.Second
	return f
}

// load starts the application's writers on tenants 1 and 2, straight to
// the source (the application's network is not the one that fails).
func (f *faulty) load(t *testing.T) {
	t.Helper()
	stop, err := testenv.Load(context.Background(), f.src.App, []int{1, 2}, 2)
	if err != nil {
		t.Fatal(err)
	}
	f.stopLoad = stop
	t.Cleanup(func() {
		if !f.loadCancelled {
			stop()
		}
	})
}

// settle stops the writers, waits until the target reached the source's
// position and compares tenant 1 row by row.
func (f *faulty) settle(t *testing.T, j *Job) {
	t.Helper()
	ctx := context.Background()
	if f.stopLoad != nil {
		f.loadCancelled = true
		f.stopLoad()
	}
	end := currentLSN(t, ctx, f.src.Admin)
	waitFor(t, 90*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
	compareTenant(t, ctx, f.src.Admin, f.dst.Admin, "public", "public", "1", movedTables)
}

// retries reads the job's retry counter.
func retriesOf(t *testing.T, j *Job) float64 {
	t.Helper()
	var m dto.Metric
	if err := j.m.retries.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// gathered reads tenant 1's sample of a gauge or counter from the registry
// /metrics serves, which holds the cutover's metrics too.
func gathered(t *testing.T, name string) float64 {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if f.GetName() == name && l.GetName() == "tenant" && l.GetValue() == "1" {
					return m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{tenant=\"1\"} in the registry", name)
	return 0
}

// streaming starts the move and waits for its catch-up.
func (f *faulty) streaming(t *testing.T) (*Job, func() error) {
	t.Helper()
	j, err := New(f.cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	f.done = done
	go func() { done <- j.Run(ctx) }()
	waitCatchup(t, j, done)
	f.retriesAtStart = retriesOf(t, j)
	return j, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			t.Fatal("the move did not stop within 60s")
			return nil
		}
	}
}

// waitRetried waits until the move has reconnected at least once.
func (f *faulty) waitRetried(t *testing.T, j *Job, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, within, "the move to notice the fault and reconnect", func() bool {
		select {
		case err := <-f.done:
			t.Fatalf("the move stopped instead of reconnecting: %v", err)
		default:
		}
		return retriesOf(t, j) > f.retriesAtStart
	})
	return time.Since(start)
}

// TestConnectionsCutWhileStreaming resets promoted's connections to the
// source, then to the target, then to both, while the application writes:
// each time the move reconnects and resumes from what the target holds,
// and the replica ends equal row by row.
func TestConnectionsCutWhileStreaming(t *testing.T) {
	f := newFaulty(t, src, dst, true, true)
	j, stop := f.streaming(t)
	f.load(t)
	for _, cut := range []func(){f.srcProxy.Cut, f.dstProxy.Cut, func() { f.srcProxy.Cut(); f.dstProxy.Cut() }} {
		time.Sleep(700 * time.Millisecond)
		cut()
		f.waitRetried(t, j, 30*time.Second)
		f.retriesAtStart = retriesOf(t, j)
	}
	f.settle(t, j)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestTargetCommitAnswerLost drops the target's replies for a moment
// while the application writes, so commits are executed but their answers
// lost: the move reconnects, reads what the target committed, and applies
// nothing twice and nothing less.
func TestTargetCommitAnswerLost(t *testing.T) {
	f := newFaulty(t, src, dst, false, true)
	j, stop := f.streaming(t)
	f.load(t)
	for i := 0; i < 3; i++ {
		time.Sleep(500 * time.Millisecond)
		f.dstProxy.Blind(300 * time.Millisecond)
		f.waitRetried(t, j, 30*time.Second)
		f.retriesAtStart = retriesOf(t, j)
	}
	f.settle(t, j)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestNetworkGoesSilent stalls the source's network without a reset (no
// packet answered, nothing closed): the move notices within the receive
// timeout, not the kernel's TCP timeout, keeps reconnecting until the
// network comes back, and resumes.
func TestNetworkGoesSilent(t *testing.T) {
	f := newFaulty(t, src, dst, true, false)
	j, stop := f.streaming(t)
	f.load(t)
	f.srcProxy.Stall()
	took := f.waitRetried(t, j, 20*time.Second)
	t.Logf("noticed the silent network after %s (receive timeout %s)", took, f.cfg.Stream.ReceiveTimeout)
	time.Sleep(2 * time.Second)
	f.srcProxy.Heal()
	f.settle(t, j)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestDatabasesRestartDuringCatchup restarts the source and then the
// target (pg_ctl restart -m fast) while the application writes: the move
// rides out both without a person and ends equal row by row.
func TestDatabasesRestartDuringCatchup(t *testing.T) {
	ctx := context.Background()
	f := newFaulty(t, src, dst, false, false)
	j, stop := f.streaming(t)
	for _, c := range []*testenv.Cluster{src, dst} {
		mustExec(t, ctx, f.src.Admin, `UPDATE customers SET name = coalesce(name, '') || 'r' WHERE tenant_id = 1 AND id % 3 = 0`)
		if err := c.Restart(ctx, false); err != nil {
			t.Fatal(err)
		}
		mustExec(t, ctx, f.src.Admin, `UPDATE customers SET name = coalesce(name, '') || 's' WHERE tenant_id = 1 AND id % 5 = 0`)
		f.waitRetried(t, j, 60*time.Second)
		f.retriesAtStart = retriesOf(t, j)
	}
	f.settle(t, j)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestTargetStalledPastWalSenderTimeout stalls the target longer than
// the source's wal_sender_timeout: the stream keeps the walsender's
// deadline satisfied while the apply waits, and the move goes on (after a
// reconnect at most) once the target answers again.
func TestTargetStalledPastWalSenderTimeout(t *testing.T) {
	ctx := context.Background()
	short, err := testenv.Start(ctx, testenv.Options{Name: "job-short-wst", Settings: map[string]string{"wal_sender_timeout": "'1s'"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { short.Stop() })
	f := newFaulty(t, short, dst, false, true)
	f.cfg.Apply.Timeout = 10 * time.Second
	j, stop := f.streaming(t)
	f.load(t)
	time.Sleep(500 * time.Millisecond)
	f.dstProxy.Stall()
	time.Sleep(3 * time.Second) // three wal_sender_timeouts
	f.dstProxy.Heal()
	f.settle(t, j)
	t.Logf("%v reconnects", retriesOf(t, j)-f.retriesAtStart)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestSourceCutMidCopy resets the source's connections during the copy:
// the move stops with an error (an exported snapshot cannot be resumed),
// and a rerun copies anew and finishes.
func TestSourceCutMidCopy(t *testing.T) {
	f := newFaulty(t, src, dst, true, false)
	f.cfg.Copy.ChunkRows = 100
	j, err := New(f.cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cut := false
	j.Hooks.AfterChunk = func(string) {
		if !cut {
			cut = true
			f.srcProxy.Cut()
		}
	}
	err = j.Run(context.Background())
	if err == nil {
		t.Fatal("a copy whose source connections were reset reported success")
	}
	t.Logf("first run: %v", err)
	j, stop := f.streaming(t)
	f.settle(t, j)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestSourceCutDuringTheBarrier resets the source's connections right
// after the fence is armed and refuses new ones for a moment: the cutover
// fails, the fence is disarmed as soon as the source answers again (the
// tenant is never left fenced behind a failed cutover), and a rerun
// promotes.
func TestSourceCutDuringTheBarrier(t *testing.T) {
	ctx := context.Background()
	p := newPromotion(t, true)
	proxy, err := src.ProxyFor()
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	p.job.cfg.SourceDSN = proxy.DSN(p.src.Mover)
	once := false
	p.job.Hooks.Cutover.AfterArm = func() {
		if once {
			return
		}
		once = true
		proxy.Refuse()
		proxy.Cut()
		time.AfterFunc(time.Second, proxy.Heal)
	}
	before := retriesOf(t, p.job)
	err = p.job.Run(ctx)
	if err != nil {
		// The cutover failed and said so: the fence must be gone, and a
		// rerun promotes.
		t.Logf("first run: %v", err)
		if n := queryOne[int64](t, ctx, p.srcDSN, `SELECT count(*) FROM promoted.fence`); n != 0 {
			t.Fatalf("%d fences armed after the failed cutover", n)
		}
		again, err := New(p.job.cfg, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := again.Run(ctx); err != nil {
			t.Fatalf("rerun: %v", err)
		}
	} else {
		// The stream broke first: the move reconnected, disarmed the
		// failed attempt's fence and cut over again.
		t.Logf("promoted after %v reconnects", retriesOf(t, p.job)-before)
		if retriesOf(t, p.job) == before {
			t.Fatal("promote succeeded without noticing the cut")
		}
	}
	checkCatalogAndSource(t, ctx, p, 2)
	compareTenant(t, ctx, p.srcDSN, p.dstDSN, "public", "public", "1", movedTables)
}

// TestRetainedWALBudget holds the apply back while the source writes
// more WAL than the move may retain: the slot is dropped (the source's
// disk is safe), the move stops with an error saying why and what to do,
// and doing it (cancel, then the move again) brings the replica back.
func TestRetainedWALBudget(t *testing.T) {
	ctx := context.Background()
	f := newFaulty(t, src, dst, false, false)
	f.cfg.MaxRetainedWAL = 2 << 20
	f.cfg.ProgressInterval = 200 * time.Millisecond
	j, _ := f.streaming(t)
	if b := gathered(t, "promoted_job_retained_wal_budget_bytes"); b != 2<<20 {
		t.Errorf("promoted_job_retained_wal_budget_bytes is %v, want --max-retained-wal %d", b, 2<<20)
	}
	failed := gathered(t, "promoted_job_failures_total")
	hold := connectPinned(t, ctx, f.dst.Admin)
	defer hold.Close(ctx)
	if _, err := hold.Exec(ctx, `BEGIN; SELECT 1 FROM promoted.progress FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, f.src.Admin, `UPDATE events SET payload = 'held back' WHERE tenant_id = 1`)
	mustExec(t, ctx, f.src.Admin, `INSERT INTO events (tenant_id, kind, payload) SELECT 2, 'bulk', repeat(md5(g::text), 40) FROM generate_series(1, 4000) g`)
	var err error
	select {
	case err = <-f.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the move went on although its slot retained more WAL than allowed")
	}
	hold.Exec(ctx, "ROLLBACK")
	if err == nil || !strings.Contains(err.Error(), "--max-retained-wal") || !strings.Contains(err.Error(), "promoted cancel") {
		t.Fatalf("the move stopped with %v, want the budget named and the way out", err)
	}
	t.Logf("stopped with: %v", err)
	if n := gathered(t, "promoted_job_failures_total"); n != failed+1 {
		t.Errorf("promoted_job_failures_total went from %v to %v, want one more", failed, n)
	}
	if n := queryOne[int64](t, ctx, f.src.Admin, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Fatalf("%d slots left after the budget was exceeded", n)
	}
	if _, err := Cancel(ctx, EndConfig{SourceDSN: f.src.Mover, Tenant: "1"}, testLogger(t)); err != nil {
		t.Fatalf("cancel, as advised: %v", err)
	}
	f.cfg.MaxRetainedWAL = 0
	j, stop := f.streaming(t)
	f.settle(t, j)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
