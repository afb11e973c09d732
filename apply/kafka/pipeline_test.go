package kafka

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/testenv"
)

// holdProduce makes the broker hold every produce request until release
// is called.
func holdProduce(k *testenv.Kafka) (release func()) {
	gate := make(chan struct{})
	k.Cluster().ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		k.Cluster().KeepControl()
		k.Cluster().SleepControl(func() { <-gate })
		return nil, nil, false
	})
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }
}

// refusePartition makes the broker answer the first produce request to
// partition 2 after allowed produce requests have passed with an error
// that is not retried, and take every other request: the connection stays
// up, so the other partitions' requests succeed, and a sink that wrote on
// to partition 2 would leave a gap in it.
func refusePartition(k *testenv.Kafka, allowed int) {
	var mu sync.Mutex
	seen, refused := 0, false
	k.Cluster().ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.Cluster().KeepControl()
		mu.Lock()
		defer mu.Unlock()
		if seen++; seen <= allowed || refused {
			return nil, nil, false
		}
		preq := req.(*kmsg.ProduceRequest)
		resp := preq.ResponseKind().(*kmsg.ProduceResponse)
		resp.Version = preq.Version
		for _, rt := range preq.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				if rp.Partition != 2 {
					return nil, nil, false
				}
				refused = true
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.InvalidRecord.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
}

// TestKafkaPipelineDurable hands transactions to the broker and holds
// their produce requests: neither a heartbeat past them (with nothing else
// encoded, or after a transaction encoded meanwhile) nor that transaction
// may make Durable pass what the broker has not acknowledged; once it has,
// Flush makes all of it durable.
func TestKafkaPipelineDurable(t *testing.T) {
	src := newSource(t, `CREATE TABLE other (tenant_id int NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id))`, "other")
	txns := synthTxns(src.tables[0], 3)
	ctx := context.Background()
	k := startKafka(t)
	cfg := Config{Brokers: []string{k.Addr()}, Prefix: "pipe", Tombstones: true, Timeout: 10 * time.Second}
	s := newSink(t, cfg, src)
	// Create the topic before holding produce requests.
	if err := s.Apply(ctx, &txns[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	release := holdProduce(k)
	defer release()
	s.cfg.FlushBytes = 1 // hand each transaction over as it is applied
	if err := s.Apply(ctx, &txns[1]); err != nil {
		t.Fatal(err)
	}
	if s.flight == nil || s.cur.n != 0 {
		t.Fatal("Apply past --kafka-flush-bytes did not hand the batch to the broker")
	}
	held := func(what string) {
		t.Helper()
		time.Sleep(100 * time.Millisecond)
		if d := s.Durable(); d != txns[0].EndLSN {
			t.Fatalf("Durable %s after %s, while the broker holds transaction 1's records; want %s", d, what, txns[0].EndLSN)
		}
	}
	if err := s.Apply(ctx, &promoted.Txn{EndLSN: txns[1].EndLSN + 0x10}); err != nil {
		t.Fatal(err)
	}
	held("a heartbeat with nothing encoded")
	s.cfg.FlushBytes = 16 << 20
	if err := s.Apply(ctx, &txns[2]); err != nil {
		t.Fatal(err)
	}
	beat := txns[2].EndLSN + 0x100
	if err := s.Apply(ctx, &promoted.Txn{EndLSN: beat}); err != nil {
		t.Fatal(err)
	}
	held("a transaction and a heartbeat encoded meanwhile")
	release()
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if d := s.Durable(); d != beat {
		t.Fatalf("Durable %s after the flush, want the heartbeat's %s", d, beat)
	}
	checkOnce(t, k.Addr(), "pipe.public.other", txns)
}

// TestKafkaPipelineFailure streams many small batches (each handed over
// while the one before is in flight, in many record sets per partition),
// has the broker refuse one request to one partition midway (and take
// all others),
// then resumes and replays everything: what
// Durable covered is in the topic, and after the replay every record is
// there exactly once, which holds only if the failure left each partition
// a prefix of its records.
func TestKafkaPipelineFailure(t *testing.T) {
	src := newSource(t, `CREATE TABLE other (tenant_id int NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id))`, "other")
	txns := synthTxns(src.tables[0], 60)
	ctx := context.Background()
	k := startKafka(t)
	cfg := Config{Brokers: []string{k.Addr()}, Prefix: "pipef", Tombstones: true, BatchRecords: 2, FlushBytes: 30000, Timeout: 5 * time.Second}
	s := newSink(t, cfg, src)
	refusePartition(k, 25)
	var err error
	for i := range txns {
		if err = s.Apply(ctx, &txns[i]); err != nil {
			break
		}
	}
	if err == nil {
		err = s.Flush(ctx)
	}
	if err == nil {
		t.Fatal("the injected failure did not fail the sink")
	}
	d := s.Durable()
	if d >= txns[len(txns)-1].EndLSN {
		t.Fatalf("Durable %s reached the end although records were refused", d)
	}
	checkDurable(t, k.Addr(), "pipef.public.other", txns, d)
	t.Logf("failed with %v; Durable %s", err, d)

	s2 := newSink(t, cfg, src)
	if _, err := s2.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range txns {
		if err := s2.Apply(ctx, &txns[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if s2.Durable() != txns[len(txns)-1].EndLSN {
		t.Fatalf("Durable %s after the replay, want %s", s2.Durable(), txns[len(txns)-1].EndLSN)
	}
	checkOnce(t, k.Addr(), "pipef.public.other", txns)
}
