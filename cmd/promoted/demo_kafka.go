package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted/apply/kafka"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/testenv"
)

// demoKafka is the analytics story: tenant 1 of the pooled database is
// replicated into Kafka as Debezium records while every tenant writes,
// the records are shown as a consumer (kcat) sees them, and at the end the
// topics are folded back into rows and compared with the tenant's rows in
// the source.
func demoKafka(ctx context.Context, log *slog.Logger, say func(string, ...any), pooledDB testenv.TenantDB, live time.Duration) error {
	say("starting an in-process Kafka broker (franz-go's kfake; it speaks the real protocol over TCP)")
	k, err := testenv.StartKafka(ctx)
	if err != nil {
		return err
	}
	defer k.Close()
	stopLoad, err := testenv.Load(ctx, pooledDB.App, []int{1, 2, 3, 4, 5}, 1)
	if err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			stopLoad()
		}
	}()
	sink := "kafka://" + k.Addr() + "/demo"
	say("writers run on every tenant; replicating tenant 1 into %s", sink)
	say("topics demo.public.<table>: the snapshot first (op r), then the changes (c, u, d, and a tombstone after each delete)")
	cfg := job.Config{SourceDSN: pooledDB.Mover, TargetDSN: sink, Tenant: "1", Tables: testenv.MovedTables,
		Kafka: kafka.Config{Tombstones: true}}
	j, err := job.New(cfg, log)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(rctx) }()
	w := &watcher{addr: k.Addr(), prefix: "demo", tables: testenv.MovedTables, offsets: map[string]int64{}, counts: map[string]int{}, shown: map[string]int{}}
	deadline := time.Time{}
	for {
		select {
		case err := <-done:
			if err == nil {
				err = fmt.Errorf("the replica stopped on its own")
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		w.poll(ctx)
		fmt.Printf("    %s: %s\n", j.Phase(), w.summary())
		if j.Phase() == "catchup" && deadline.IsZero() {
			say("snapshot written; streaming tenant 1's changes for %s while the writers keep going", live)
			deadline = time.Now().Add(live)
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			break
		}
	}
	writers := stopLoad()
	stopped = true
	var acks int64
	for _, wr := range writers {
		acks += wr.Acks.Load()
	}
	end, err := currentLSN(ctx, pooledDB.Mover)
	if err != nil {
		return err
	}
	say("writers stopped after %d acknowledged writes; waiting for the replica to deliver everything up to %s", acks, end)
	for j.Applied() < end {
		select {
		case err := <-done:
			return fmt.Errorf("the replica stopped: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		return err
	}
	w.poll(ctx)
	say("delivered: %s", w.summary())
	say("one record of each kind, as a consumer reads it (kcat -C -t demo.public.orders):")
	w.examples()

	say("folding every topic back into rows (by key; deletes and tombstones remove) and comparing with tenant 1 in the source")
	conn, err := db.Open(ctx, db.Source, pooledDB.Mover, "promoted-demo")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	types, err := kafka.LoadTypes(ctx, conn, j.Tables())
	if err != nil {
		return err
	}
	kcfg := kafka.Config{Brokers: []string{k.Addr()}, Prefix: "demo"}
	folded, err := kafka.Fold(ctx, kcfg, j.Tables(), types)
	if err != nil {
		return err
	}
	diffs, err := kafka.Compare(ctx, conn, j.Tables(), folded, 0)
	if err != nil {
		return err
	}
	if len(diffs) > 0 {
		return fmt.Errorf("the topics differ from the source: %s", strings.Join(diffs, "; "))
	}
	rows := 0
	for _, t := range j.Tables() {
		rows += len(folded[t.String()])
		fmt.Printf("      %-22s %7d rows equal\n", t.String(), len(folded[t.String()]))
	}
	say("the topics hold exactly tenant 1's %d rows, column by column, and no other tenant's", rows)
	if _, err := job.Cancel(ctx, job.EndConfig{SourceDSN: pooledDB.Mover, Tenant: "1"}, log); err != nil {
		return err
	}
	say("replica cancelled: its slot and publication are dropped")
	return nil
}

// watcher reads the demo's topics as a consumer would, counting records
// by op and keeping the first record of each kind to show.
type watcher struct {
	addr, prefix string
	tables       []string
	offsets      map[string]int64
	counts       map[string]int
	shown        map[string]int
	first        []string
}

func (w *watcher) poll(ctx context.Context) {
	for _, t := range w.tables {
		topic := w.prefix + ".public." + t
		for p := 0; p < testenv.KafkaPartitions; p++ {
			w.read(ctx, topic, p)
		}
	}
}

func (w *watcher) read(ctx context.Context, topic string, p int) {
	conn, err := kafkago.DialLeader(ctx, "tcp", w.addr, topic, p)
	if err != nil {
		return // not created yet
	}
	defer conn.Close()
	id := fmt.Sprintf("%s/%d", topic, p)
	last, err := conn.ReadLastOffset()
	if err != nil || last <= w.offsets[id] {
		return
	}
	if _, err := conn.Seek(w.offsets[id], kafkago.SeekAbsolute); err != nil {
		return
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := conn.ReadBatch(1, 64<<20)
	defer b.Close()
	for {
		m, err := b.ReadMessage()
		if err != nil {
			return
		}
		w.offsets[id] = m.Offset + 1
		op := "tombstone"
		if m.Value != nil {
			var v struct {
				Payload struct {
					Op string `json:"op"`
				} `json:"payload"`
			}
			if json.Unmarshal(m.Value, &v) == nil {
				op = v.Payload.Op
			}
		}
		w.counts[op]++
		if w.shown[op] == 0 {
			w.shown[op]++
			w.first = append(w.first, fmt.Sprintf("%s [%d] @%d  key: %s\n      value: %s", topic, p, m.Offset, m.Key, orNull(m.Value)))
		}
	}
}

func orNull(v []byte) string {
	if v == nil {
		return "null (a tombstone: compacted topics drop the key)"
	}
	// The payload only: the schema part is long and the same every time.
	var env struct {
		Payload json.RawMessage `json:"payload"`
	}
	if json.Unmarshal(v, &env) == nil && env.Payload != nil {
		return `{"schema": {…}, "payload": ` + string(env.Payload) + "}"
	}
	return string(v)
}

func (w *watcher) summary() string {
	ops := make([]string, 0, len(w.counts))
	for op := range w.counts {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	parts := make([]string, 0, len(ops))
	for _, op := range ops {
		parts = append(parts, fmt.Sprintf("%s=%d", op, w.counts[op]))
	}
	if len(parts) == 0 {
		return "no records yet"
	}
	return "records " + strings.Join(parts, " ")
}

func (w *watcher) examples() {
	for _, f := range w.first {
		fmt.Printf("    %s\n", f)
	}
}
