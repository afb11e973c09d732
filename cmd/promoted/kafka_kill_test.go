package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply/kafka"
	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/testenv"
)

// kafkaSetup seeds a pooled source, starts an in-process Kafka broker and
// writers on tenants 1, 2 and 3, and returns the replicate arguments for
// tenant 1 into the broker.
func kafkaSetup(t *testing.T) (srcDSN, jobID string, k *testenv.Kafka, args []string, stopLoad func()) {
	t.Helper()
	ctx := context.Background()
	s := src.NewSaaS(t, 200, 5)
	k, err := testenv.StartKafka(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	jobID = job.KafkaID(dbName(t, s.Mover), "public", "1")
	stopLoad = startLoad(t, ctx, s.App, []int{1, 2, 3}, 2)
	args = []string{"replicate", "--source", s.Mover, "--sink", "kafka://" + k.Addr() + "/pm", "--tenant", "1"}
	return s.Mover, jobID, k, args, stopLoad
}

// replicaPhase is the phase recorded in promoted.jobs for the move.
func replicaPhase(ctx context.Context, srcDSN, jobID string) string {
	conn, err := pgx.Connect(ctx, srcDSN)
	if err != nil {
		return ""
	}
	defer conn.Close(ctx)
	var phase string
	conn.QueryRow(ctx, `SELECT phase FROM promoted.jobs WHERE job_id = $1`, jobID).Scan(&phase)
	return phase
}

// TestKafkaKillDuringStream: SIGKILL, three times at random moments, while
// the tenant's changes stream into Kafka. Every change must be in the
// topics exactly once: the restarted daemon reads each partition's last
// record and skips what was delivered.
func TestKafkaKillDuringStream(t *testing.T) {
	ctx := context.Background()
	srcDSN, jobID, k, args, stopLoad := kafkaSetup(t)
	d := startDaemon(t, nil, args...)
	waitFor(t, d, 90*time.Second, "the stream", func() bool { return replicaPhase(ctx, srcDSN, jobID) == "catchup" })
	time.Sleep(1500 * time.Millisecond)
	for i := 0; i < 3; i++ {
		d.kill(t)
		d = startDaemon(t, nil, args...)
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
	}
	finishKafka(t, d, srcDSN, jobID, k, stopLoad, false)
}

// TestKafkaKillDuringSnapshot: SIGKILL while the snapshot is being
// written, during its second table. The restarted daemon streams the
// changes since the first snapshot's point, then writes, as of a new
// exported snapshot (the old one died with its session), only the rows
// not yet delivered: the first table is not written again, the second
// only from its last acknowledged row on (rows of the batch in flight at
// the kill may repeat, op r, an upsert by key). Changes never repeat, and
// nothing is missing.
func TestKafkaKillDuringSnapshot(t *testing.T) {
	ctx := context.Background()
	srcDSN, jobID, k, args, stopLoad := kafkaSetup(t)
	// Small batches, so the first table's are acknowledged (and say so
	// in later records) before the kill.
	d := startDaemon(t, []string{"PROMOTED_TEST_CHUNK_DELAY=1s"}, append(args, "--kafka-flush-bytes", "65536")...)
	waitFor(t, d, 90*time.Second, "the snapshot", func() bool { return replicaPhase(ctx, srcDSN, jobID) == "snapshot" })
	waitFor(t, d, 60*time.Second, "the second table's snapshot records", func() bool {
		changes, reads := records(t, ctx, k.Addr(), "pm.public.events")
		return len(changes)+len(reads) > 0
	})
	time.Sleep(500 * time.Millisecond)
	d.kill(t)
	if p := replicaPhase(ctx, srcDSN, jobID); p != "snapshot" {
		t.Fatalf("phase %q after the kill: the kill did not land during the snapshot", p)
	}
	d = startDaemon(t, nil, args...)
	waitFor(t, d, 90*time.Second, "the stream", func() bool { return replicaPhase(ctx, srcDSN, jobID) == "catchup" })
	time.Sleep(2 * time.Second)
	repeated := finishKafka(t, d, srcDSN, jobID, k, stopLoad, true)
	if repeated["public.customers"] != 0 {
		t.Errorf("the first table, wholly delivered before the kill, had %d snapshot rows written again", repeated["public.customers"])
	}
	if n, all := repeated["public.events"], 1000; n >= all {
		t.Errorf("the second table had %d snapshot rows written again: the resumed snapshot started it over", n)
	}
}

// finishKafka stops the writers, waits for the slot to pass the source's
// position (it is acknowledged only past what the broker acknowledged),
// stops the daemon, folds the topics and compares them with the tenant's
// rows, and counts repeated records.
func finishKafka(t *testing.T, d *daemon, srcDSN, jobID string, k *testenv.Kafka, stopLoad func(), snapshotRepeats bool) (repeatedByTable map[string]int) {
	t.Helper()
	repeatedByTable = map[string]int{}
	ctx := context.Background()
	stopLoad()
	end, err := currentLSN(ctx, srcDSN)
	if err != nil {
		t.Fatal(err)
	}
	slot := "promoted_" + jobID
	waitFor(t, d, 90*time.Second, "the slot to reach "+end.String(), func() bool {
		var s *string
		conn, err := pgx.Connect(ctx, srcDSN)
		if err != nil {
			return false
		}
		defer conn.Close(ctx)
		if conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&s) != nil || s == nil {
			return false
		}
		l, _ := promoted.ParseLSN(*s)
		return l >= end
	})
	d.terminate(t)
	conn := connectPinned(t, ctx, srcDSN)
	defer conn.Close(ctx)
	plan, err := schema.Load(ctx, conn, schema.Config{Schema: "public", TargetSchema: "public", TenantColumn: "tenant_id", Tables: testenv.MovedTables, Tenant: "1"})
	if err != nil {
		t.Fatal(err)
	}
	types, err := kafka.LoadTypes(ctx, conn, plan.Tables)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kafka.Config{Brokers: []string{k.Addr()}, Prefix: "pm"}
	folded, err := kafka.Fold(ctx, cfg, plan.Tables, types)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range plan.Tables {
		var want int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{tb.Schema, tb.Name}.Sanitize()+" WHERE "+tb.TenantPredicate()).Scan(&want); err != nil {
			t.Fatal(err)
		}
		if got := len(folded[tb.String()]); got != want {
			t.Errorf("%s: %d rows in the topic, %d of the tenant in the source", tb, got, want)
		}
		changes, reads := records(t, ctx, k.Addr(), "pm."+tb.Schema+"."+tb.Name)
		for pos, n := range changes {
			if n > 1 {
				t.Errorf("%s: the change at %s was written %d times", tb, pos, n)
			}
		}
		repeated := 0
		for key, n := range reads {
			if n > 1 {
				repeated++
				if !snapshotRepeats {
					t.Errorf("%s: the snapshot row %s was written %d times", tb, key, n)
				}
			}
		}
		t.Logf("%s: %d rows, %d change records, %d snapshot rows (%d written again)", tb, want, len(changes), len(reads), repeated)
		repeatedByTable[tb.String()] = repeated
	}
	diffs, err := kafka.Compare(ctx, conn, plan.Tables, folded, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Error(d)
	}
	if s := slotsOf(t, ctx, srcDSN); len(s) != 1 || s[0] != slot {
		t.Errorf("slots on the source: %v, want exactly [%s] (a restart must not leave an orphan)", s, slot)
	}
	cancelJob(t, ctx, srcDSN, "public", "1")
	return repeatedByTable
}

// records reads every record of a topic and counts the change records by
// their position header and the snapshot records by key.
func records(t *testing.T, ctx context.Context, addr, topic string) (changes, reads map[string]int) {
	t.Helper()
	changes, reads = map[string]int{}, map[string]int{}
	for p := 0; p < testenv.KafkaPartitions; p++ {
		conn, err := kafkago.DialLeader(ctx, "tcp", addr, topic, p)
		if err != nil {
			t.Fatal(err)
		}
		last, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if last == 0 {
			continue
		}
		r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		for {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			m, err := r.ReadMessage(rctx)
			cancel()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				r.Close()
				t.Fatalf("read %s partition %d: %v", topic, p, err)
			}
			snap, pos := "", ""
			for _, h := range m.Headers {
				switch h.Key {
				case "promoted.snapshot":
					snap = string(h.Value)
				case "promoted.position":
					pos = string(h.Value)
				}
			}
			switch {
			case pos != "":
				changes[fmt.Sprintf("%s/%t", pos, m.Value == nil)]++
			case snap != "":
				reads[string(m.Key)]++
			}
			if m.Offset+1 >= last {
				break
			}
		}
		r.Close()
	}
	return changes, reads
}
