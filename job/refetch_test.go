package job

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestRefetchWaitsForTheCommit moves a row with a TOASTed payload into
// tenant 1 while the source waits for a synchronous standby that never
// answers: the commit is decoded (its record is flushed) but not yet
// visible, so a re-read of the row finds nothing. The row must never be
// dropped: the apply waits for the commit to become visible; when it
// waits longer than allowed, the move stops loudly, and a rerun applies
// the row (docs/hazards.md 3.2, 14.3).
func TestRefetchWaitsForTheCommit(t *testing.T) {
	for _, giveUp := range []bool{false, true} {
		t.Run(map[bool]string{false: "waits", true: "gives_up_loudly"}[giveUp], func(t *testing.T) {
			ctx := context.Background()
			s := src.NewSaaS(t, 40, 2)
			d := dst.NewTenantDB(t)
			mustExec(t, ctx, s.Owner, `ALTER TABLE events ALTER payload SET STORAGE EXTERNAL;
				INSERT INTO events (id, tenant_id, kind, payload)
				SELECT 999999, 2, 'toasted', string_agg(md5(g::text), '') FROM generate_series(1, 400) g`)
			cfg := Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: []string{"events"}}
			j, err := New(cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			if giveUp {
				j.FetchWait = 500 * time.Millisecond
			}
			jctx, cancel := context.WithCancel(ctx)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- j.Run(jctx) }()
			waitCatchup(t, j, done)

			// Commits now wait for a standby that does not exist.
			syncStandby(t, ctx, s.Admin, "'ghost'")
			t.Cleanup(func() { syncStandby(t, context.Background(), s.Admin, "DEFAULT") })
			moved := make(chan error, 1)
			go func() {
				app := connectPinned(t, ctx, s.App)
				defer app.Close(ctx)
				_, err := app.Exec(ctx, `UPDATE events SET tenant_id = 1 WHERE id = 999999`)
				moved <- err
			}()
			time.Sleep(1500 * time.Millisecond) // decoded, applied up to the re-read, not visible
			var runErr error
			if giveUp {
				select {
				case runErr = <-done:
				case <-time.After(30 * time.Second):
					t.Fatal("the move did not stop although the row's commit stayed invisible past FetchWait")
				}
				if runErr == nil || !strings.Contains(runErr.Error(), "still not visible") {
					t.Fatalf("replicate: %v, want it to stop loudly", runErr)
				}
				t.Logf("stopped with: %v", runErr)
			}
			syncStandby(t, ctx, s.Admin, "DEFAULT")
			if err := <-moved; err != nil {
				t.Fatalf("the application's update: %v", err)
			}
			if giveUp {
				// The rerun resumes before the row and applies it.
				j, err = New(cfg, testLogger(t))
				if err != nil {
					t.Fatal(err)
				}
				go func() { done <- j.Run(jctx) }()
				waitCatchup(t, j, done)
			}
			end := currentLSN(t, ctx, s.Admin)
			waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
			compareTenant(t, ctx, s.Admin, d.Admin, "public", "public", "1", []string{"events"})
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// syncStandby sets synchronous_standby_names on the source's cluster.
func syncStandby(t *testing.T, ctx context.Context, admin, value string) {
	t.Helper()
	c := connectPinned(t, ctx, admin)
	defer c.Close(ctx)
	for _, q := range []string{"ALTER SYSTEM SET synchronous_standby_names = " + value, "SELECT pg_reload_conf()", "SELECT pg_sleep(0.2)"} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
}

// lockedLog collects a job's log lines for a test.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStalledApplyIsReported blocks the apply on the target while the
// source moves on: the move says the apply is stalled (a warning each
// interval and the stalled-seconds gauge), never ordinary progress at a
// fixed position, and goes on once the target is free.
func TestStalledApplyIsReported(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 40, 2)
	d := dst.NewTenantDB(t)
	logs := &lockedLog{}
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: movedTables, ProgressInterval: 100 * time.Millisecond},
		slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	j.StallAfter = 500 * time.Millisecond
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitCatchup(t, j, done)
	hold := connectPinned(t, ctx, d.Admin)
	defer hold.Close(ctx)
	if _, err := hold.Exec(ctx, `BEGIN; SELECT 1 FROM promoted.progress FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, s.Admin, `UPDATE customers SET name = 'while stalled' WHERE tenant_id = 1`)
	waitFor(t, 30*time.Second, "a stalled-apply warning", func() bool {
		return strings.Contains(logs.String(), "the apply has made no progress")
	})
	var m dto.Metric
	if err := j.m.stalled.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	if v := m.GetGauge().GetValue(); v <= 0 {
		t.Errorf("promoted_job_apply_stalled_seconds is %v while the apply is stalled", v)
	}
	hold.Exec(ctx, "ROLLBACK")
	end := currentLSN(t, ctx, s.Admin)
	waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
	compareTenant(t, ctx, s.Admin, d.Admin, "public", "public", "1", movedTables)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
