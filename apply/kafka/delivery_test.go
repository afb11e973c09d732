package kafka

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/testenv"
)

// synthTxns makes n transactions of three inserts each into other (ids
// 3i+1..3i+3, tenant 7) with increasing LSNs; every fifth also deletes the
// previous transaction's first row (a delete and its tombstone).
func synthTxns(tbl *promoted.Table, n int) []promoted.Txn {
	var out []promoted.Txn
	lsn := promoted.LSN(0x3000000)
	next := func() promoted.LSN { lsn += 0x40; return lsn }
	for i := 0; i < n; i++ {
		txn := promoted.Txn{Xid: uint32(2000 + i), CommitTime: time.Date(2024, 2, 1, 0, 0, i, 0, time.UTC)}
		for j := 1; j <= 3; j++ {
			id := strconv.Itoa(3*i + j)
			txn.Changes = append(txn.Changes, promoted.Change{Op: promoted.Insert, Table: tbl, LSN: next(), New: promoted.Row{
				{Kind: promoted.Text, Data: []byte("7")}, {Kind: promoted.Text, Data: []byte(id)}, {Kind: promoted.Text, Data: []byte("note " + id)}}})
		}
		if i > 0 && i%5 == 0 {
			id := strconv.Itoa(3*(i-1) + 1)
			txn.Changes = append(txn.Changes, promoted.Change{Op: promoted.Delete, Table: tbl, LSN: next(), Key: promoted.Row{
				{Kind: promoted.Text, Data: []byte("7")}, {Kind: promoted.Text, Data: []byte(id)}, {Kind: promoted.Null}}})
		}
		txn.FinalLSN = next()
		txn.EndLSN = txn.FinalLSN + 0x30
		out = append(out, txn)
	}
	return out
}

// expectedRows is what the synthetic transactions leave in other.
func expectedRows(txns []promoted.Txn) map[string]bool {
	rows := map[string]bool{}
	for _, t := range txns {
		for _, c := range t.Changes {
			switch c.Op {
			case promoted.Insert:
				rows[KeyText([]string{"7", string(c.New[1].Data)})] = true
			case promoted.Delete:
				delete(rows, KeyText([]string{"7", string(c.Key[1].Data)}))
			}
		}
	}
	return rows
}

// positions reads every record's position header, counting repeats.
func positions(t *testing.T, addr, topic string) map[string]int {
	t.Helper()
	ctx := context.Background()
	out := map[string]int{}
	for p := 0; p < testenv.KafkaPartitions; p++ {
		conn, err := kafkago.DialLeader(ctx, "tcp", addr, topic, p)
		if err != nil {
			t.Fatal(err)
		}
		first, end, err := conn.ReadOffsets()
		if err != nil {
			t.Fatal(err)
		}
		conn.Seek(first, kafkago.SeekAbsolute)
		for off := first; off < end; off++ {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			m, err := conn.ReadMessage(64 << 20)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range m.Headers {
				if h.Key == positionHeader {
					out[string(h.Value)]++
				}
			}
		}
		conn.Close()
	}
	return out
}

// txnPositions lists the positions of a transaction's records (with
// tombstones).
func txnPositions(txn *promoted.Txn) []string {
	var out []string
	for _, c := range txn.Changes {
		p := Position{Commit: txn.FinalLSN, LSN: c.LSN}
		out = append(out, p.String())
		if c.Op == promoted.Delete {
			p.Sub = 1
			out = append(out, p.String())
		}
	}
	return out
}

// checkDurable fails the test if Durable d covers a transaction one of
// whose records the topic lacks.
func checkDurable(t *testing.T, addr, topic string, txns []promoted.Txn, d promoted.LSN) {
	t.Helper()
	got := positions(t, addr, topic)
	for i := range txns {
		if txns[i].EndLSN > d {
			break
		}
		for _, p := range txnPositions(&txns[i]) {
			if got[p] == 0 {
				t.Fatalf("Durable %s covers transaction %d, whose record %s the broker does not hold", d, i, p)
			}
		}
	}
}

// checkOnce fails the test unless the topic holds every record of the
// transactions exactly once, and nothing else.
func checkOnce(t *testing.T, addr, topic string, txns []promoted.Txn) {
	t.Helper()
	got := positions(t, addr, topic)
	want := 0
	for i := range txns {
		for _, p := range txnPositions(&txns[i]) {
			want++
			if got[p] != 1 {
				t.Errorf("record %s of transaction %d is in the topic %d times, want once", p, i, got[p])
			}
		}
	}
	if len(got) != want {
		t.Errorf("the topic holds %d distinct records, want %d", len(got), want)
	}
}

// failPartition makes the broker drop the connection of every produce
// request that writes to partition 2, once allowed more produce requests
// have passed, until stop is called.
func failPartition(k *testenv.Kafka, allowed int) (stop func()) {
	var mu sync.Mutex
	seen, stopped := 0, false
	k.Cluster().ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.Cluster().KeepControl()
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return nil, nil, false
		}
		seen++
		if seen <= allowed {
			return nil, nil, false
		}
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range tp.Partitions {
				if p.Partition == 2 {
					return nil, errors.New("injected: partition 2 is gone"), true
				}
			}
		}
		return nil, nil, false
	})
	return func() { mu.Lock(); stopped = true; mu.Unlock() }
}

// TestKafkaDurableNeverPassesUnacked fails produce requests to one
// partition in the middle of a flush of many rounds: Flush must fail,
// Durable must not pass a transaction with a record the broker did not
// acknowledge, and the sink must stay failed. Then a broker that dies
// mid-flush leaves Durable where the last acknowledged flush put it.
func TestKafkaDurableNeverPassesUnacked(t *testing.T) {
	src := newSource(t, `CREATE TABLE other (tenant_id int NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id))`, "other")
	txns := synthTxns(src.tables[0], 30)
	ctx := context.Background()
	k := startKafka(t)
	cfg := Config{Brokers: []string{k.Addr()}, Prefix: "dur", Tombstones: true, BatchRecords: 4, Timeout: 5 * time.Second}
	s := newSink(t, cfg, src)
	for i := 0; i < 10; i++ {
		if err := s.Apply(ctx, &txns[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Durable() != txns[9].EndLSN {
		t.Fatalf("Durable %s after a whole flush, want %s", s.Durable(), txns[9].EndLSN)
	}
	stop := failPartition(k, 3)
	for i := 10; i < 30; i++ {
		if err := s.Apply(ctx, &txns[i]); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Flush(ctx)
	stop()
	if err == nil {
		t.Fatal("Flush succeeded although partition 2 refused its records")
	}
	d := s.Durable()
	if d >= txns[29].EndLSN {
		t.Fatalf("Durable %s reached the end although records were refused", d)
	}
	checkDurable(t, k.Addr(), "dur.public.other", txns, d)
	t.Logf("Durable stopped at %s (transactions up to %s were flushed)", d, txns[29].EndLSN)
	if err := s.Apply(ctx, &txns[0]); err == nil || s.Flush(ctx) == nil {
		t.Fatal("a failed sink accepted more work")
	}

	// A broker that dies in the middle of a flush.
	k2 := startKafka(t)
	s2 := newSink(t, Config{Brokers: []string{k2.Addr()}, Prefix: "dur", Tombstones: true, Timeout: 2 * time.Second}, src)
	s2.attempts = 1
	for i := 0; i < 5; i++ {
		s2.Apply(ctx, &txns[i])
	}
	if err := s2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 5; i < 10; i++ {
		s2.Apply(ctx, &txns[i])
	}
	k2.Close()
	if err := s2.Flush(ctx); err == nil {
		t.Fatal("Flush succeeded with the broker gone")
	}
	if s2.Durable() != txns[4].EndLSN {
		t.Fatalf("Durable %s after the broker died, want %s (the last acknowledged flush)", s2.Durable(), txns[4].EndLSN)
	}
}

// TestKafkaResumeAddsNoDuplicates restarts after a clean stop and after a
// flush that reached only some partitions: a new sink's Resume reads what
// the partitions hold, and replaying every transaction from the start adds
// each record exactly once, missing none.
func TestKafkaResumeAddsNoDuplicates(t *testing.T) {
	src := newSource(t, `CREATE TABLE other (tenant_id int NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id))`, "other")
	txns := synthTxns(src.tables[0], 30)
	ctx := context.Background()
	k := startKafka(t)
	cfg := Config{Brokers: []string{k.Addr()}, Prefix: "res", Tombstones: true, BatchRecords: 4, Timeout: 5 * time.Second}

	run := func(from, to int, resume bool) (*Sink, error) {
		s := newSink(t, cfg, src)
		if resume {
			r, err := s.Resume(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("resumed: last %s, %d partitions known", r.Last, len(r.Delivered["res.public.other"]))
		}
		for i := from; i < to; i++ {
			if err := s.Apply(ctx, &txns[i]); err != nil {
				return s, err
			}
		}
		return s, s.Flush(ctx)
	}
	// A clean run of the first ten, then a restart replaying from zero.
	if _, err := run(0, 10, false); err != nil {
		t.Fatal(err)
	}
	if _, err := run(0, 20, true); err != nil {
		t.Fatal(err)
	}
	// A flush that reaches only partitions 0 and 1, then a restart.
	stop := failPartition(k, 1)
	s, err := run(20, 30, true)
	stop()
	if err == nil {
		t.Fatal("the injected failure did not fail the flush")
	}
	if s.Durable() >= txns[29].EndLSN {
		t.Fatal("Durable passed refused records")
	}
	if _, err := run(0, 30, true); err != nil {
		t.Fatal(err)
	}

	checkOnce(t, k.Addr(), "res.public.other", txns)
	state, err := Fold(ctx, cfg, src.tables, src.types)
	if err != nil {
		t.Fatal(err)
	}
	rows := expectedRows(txns)
	if len(state["public.other"]) != len(rows) {
		t.Fatalf("folded %d rows, want %d", len(state["public.other"]), len(rows))
	}
	for key := range rows {
		if state["public.other"][key] == nil {
			t.Fatalf("row %s missing", key)
		}
	}
}
