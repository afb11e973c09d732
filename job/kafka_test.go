package job

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/promoted/promoted/apply/kafka"
	"github.com/promoted/promoted/testenv"
)

// TestReplicateToKafkaUnderLoad replicates tenant 1 into Kafka while
// writers insert, update and delete rows of tenants 1, 2 and 3 through the
// snapshot and the stream, then folds every topic back into table state
// (by key; deletes and tombstones remove) and compares it with the
// tenant's rows in the source, row by row and column by column, as
// PostgreSQL prints them. No row of another tenant may appear.
func TestReplicateToKafkaUnderLoad(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 60, 5)
	k, err := testenv.StartKafka(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	stopLoad := load(t, ctx, s.App, []int{1, 2, 3}, 2)
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: "kafka://" + k.Addr() + "/pm", Tenant: "1", Tables: movedTables,
		Kafka: kafka.Config{Tombstones: true, RereadToast: true}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	j.Hooks.AfterChunk = func(string) { time.Sleep(100 * time.Millisecond) }
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(rctx) }()
	waitCatchup(t, j, done)
	time.Sleep(2 * time.Second)
	writers := stopLoad()
	var acks int64
	for _, w := range writers {
		acks += w.Acks.Load()
	}
	if acks < 50 {
		t.Fatalf("the writers made only %d writes: the test proves nothing", acks)
	}
	end := currentLSN(t, ctx, s.Admin)
	waitFor(t, 60*time.Second, "the replica to deliver every write", func() bool { return j.Applied() >= end })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	compareKafka(t, ctx, s.Admin, j, "1")
	// The writers' updates leave TOASTed notes unchanged: with
	// RereadToast those values were re-read from the source.
	if n := counter(t, "promoted_kafka_toast_rereads_total", "1"); n == 0 {
		t.Errorf("no unchanged TOAST value was re-read: the writers' TOAST updates did not reach the re-read")
	}
}

// counter reads a counter of the tenant from the default registry.
func counter(t *testing.T, name, tenant string) float64 {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" && l.GetValue() == tenant {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// compareKafka folds the replica's topics and compares them with the
// tenant's source rows, row by row (kafka.Compare).
func compareKafka(t *testing.T, ctx context.Context, dsn string, j *Job, tenant string) {
	t.Helper()
	conn := connectPinned(t, ctx, dsn)
	defer conn.Close(ctx)
	types, err := kafka.LoadTypes(ctx, conn, j.Tables())
	if err != nil {
		t.Fatal(err)
	}
	folded, err := kafka.Fold(ctx, j.cfg.Kafka, j.Tables(), types)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range j.Tables() {
		if len(folded[tb.String()]) == 0 {
			t.Fatalf("%s: no rows in the topic: the test proves nothing", tb)
		}
		t.Logf("%s: %d rows in the topic", tb, len(folded[tb.String()]))
	}
	diffs, err := kafka.Compare(ctx, conn, j.Tables(), folded, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Error(d)
	}
}
