package job

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// slotWatcher samples the slot's confirmed flush LSN and then the target's
// recorded applied LSN; since the applied LSN only grows, a slot ahead of a
// later sample proves the slot passed what the target had (invariant 4).
type slotWatcher struct {
	samples, violations atomic.Int64
	worst               atomic.Value
}

func (w *slotWatcher) run(ctx context.Context, t *testing.T, srcDSN, dstDSN, slot, jobID string) {
	s, err := pgx.Connect(ctx, srcDSN)
	if err != nil {
		return
	}
	defer s.Close(context.Background())
	d, err := pgx.Connect(ctx, dstDSN)
	if err != nil {
		return
	}
	defer d.Close(context.Background())
	for ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		var flush, applied *string
		if err := s.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&flush); err != nil || flush == nil {
			continue
		}
		if err := d.QueryRow(ctx, `SELECT applied_lsn::text FROM promoted.progress WHERE job_id = $1`, jobID).Scan(&applied); err != nil || applied == nil {
			continue
		}
		f, _ := promoted.ParseLSN(*flush)
		a, _ := promoted.ParseLSN(*applied)
		w.samples.Add(1)
		if f > a {
			w.violations.Add(1)
			w.worst.Store(*flush + " > " + *applied)
		}
	}
}

func TestReplicateUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name   string
		second bool
	}{{"same_database", false}, {"second_cluster", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := src.NewSaaS(t, 60, 5)
			d, dstSchema := s, "tenant_1"
			if tc.second {
				d, dstSchema = dst.NewTenantDB(t), "public"
			}
			srcDSN, dstDSN := s.Admin, d.Admin
			stopLoad := load(t, ctx, s.App, []int{1, 2, 3}, 2)
			j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", TargetSchema: dstSchema,
				Tables: movedTables}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			j.cfg.Copy.Parallel, j.cfg.Copy.ChunkRows = 2, 300
			// Slow chunks so the writers change rows while the copy runs.
			j.Hooks.AfterChunk = func(string) { time.Sleep(100 * time.Millisecond) }
			jctx, cancel := context.WithCancel(ctx)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- j.Run(jctx) }()
			waitFor(t, 60*time.Second, "snapshot", func() bool { return j.Phase() == "snapshot" || j.Phase() == "catchup" })
			var w slotWatcher
			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			go w.run(wctx, t, srcDSN, dstDSN, j.names.Slot, j.ID)
			waitFor(t, 120*time.Second, "catch-up", func() bool {
				select {
				case err := <-done:
					t.Fatalf("job ended early: %v", err)
				default:
				}
				return j.Phase() == "catchup"
			})
			time.Sleep(3 * time.Second)
			writers := stopLoad()
			var acks int64
			for _, wr := range writers {
				acks += wr.Acks.Load()
				if wr.Errs.Load() > 0 {
					t.Errorf("writer on tenant %d saw %d errors, last: %v", wr.Tenant, wr.Errs.Load(), wr.Last.Load())
				}
			}
			if acks < 100 {
				t.Fatalf("only %d writes acknowledged: the load proves nothing", acks)
			}
			end := currentLSN(t, ctx, srcDSN)
			waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool {
				select {
				case err := <-done:
					t.Fatalf("job ended early: %v", err)
				default:
				}
				return j.Applied() >= end
			})
			compareTenant(t, ctx, srcDSN, dstDSN, "public", dstSchema, "1", movedTables)
			// The three-level chain customers <- orders <- order_lines is
			// rebuilt and validated on the target after the load.
			fk := connectPinned(t, ctx, dstDSN)
			chain := rowsOf(t, ctx, fk, `SELECT conrelid::regclass::text || '->' || confrelid::regclass::text FROM pg_constraint
			    WHERE contype = 'f' AND convalidated AND connamespace = $1::regnamespace AND confrelid::regclass::text NOT LIKE '%tenants' ORDER BY 1`, dstSchema)
			fk.Close(ctx)
			if len(chain) != 2 {
				t.Errorf("target foreign keys between moved tables: %v, want order_lines->orders and orders->customers, validated", chain)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("clean stop returned %v", err)
			}
			wcancel()
			if w.samples.Load() == 0 {
				t.Fatal("the slot watcher took no sample")
			}
			if v := w.violations.Load(); v > 0 {
				t.Fatalf("slot confirmed flush passed the target's applied LSN %d times (e.g. %v)", v, w.worst.Load())
			}
			t.Logf("%d writes acknowledged, %d slot samples", acks, w.samples.Load())
		})
	}
}
