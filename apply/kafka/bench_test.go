package kafka

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/promoted/promoted"
)

// The benchmarks write the benchmark's (bench/env.go) tables into the
// in-process broker, so a profile shows the sink's own cost next to the
// broker's: go test -run X -bench Kafka -cpu 1 -cpuprofile cpu.out.

const benchDDL = `
CREATE TABLE customers (tenant_id int NOT NULL, id bigint NOT NULL, email text NOT NULL, name text, created timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id));
CREATE TABLE orders (tenant_id int NOT NULL, id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL,
    total numeric(12,2), note text, meta jsonb, created timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id));
CREATE TABLE order_lines (tenant_id int NOT NULL, order_id bigint NOT NULL, line int NOT NULL, sku text NOT NULL, qty int NOT NULL, price numeric(10,2),
    PRIMARY KEY (tenant_id, order_id, line));`

// cpuTime is the process's user and system CPU time so far: on a shared
// machine it varies far less than the wall clock.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// report adds records/s and the CPU time (sink and broker) per record.
func report(b *testing.B, records int, cpu0 time.Duration) {
	b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(records), "cpu-us/record")
}

func textRow(vals ...string) promoted.Row {
	row := make(promoted.Row, len(vals))
	for i, v := range vals {
		row[i] = promoted.Value{Kind: promoted.Text, Data: []byte(v)}
	}
	return row
}

func orderRow(id int, status, total string) promoted.Row {
	return textRow("7", strconv.Itoa(id), strconv.Itoa(id%5000+1), status, total, "bench order", `{"bench": true}`, "2024-02-01 10:11:12.345678+00")
}

func lineRow(order, line int) promoted.Row {
	return textRow("7", strconv.Itoa(order), strconv.Itoa(line), "SKU-"+strconv.Itoa(line), strconv.Itoa(line), strconv.Itoa(line)+".00")
}

// BenchmarkKafkaSnapshot writes order_lines snapshot rows in batches of
// 4000, as the job does, into one sink.
func BenchmarkKafkaSnapshot(b *testing.B) {
	src := newSource(b, benchDDL, "customers", "orders", "order_lines")
	k := startKafka(b)
	ctx := context.Background()
	lines := src.tables[2]
	const batch = 4000
	rows := make([]promoted.Row, batch)
	for i := range rows {
		rows[i] = lineRow(i/3+1, i%3+1)
	}
	s := newSink(b, Config{Brokers: []string{k.Addr()}, Prefix: "bs", Tombstones: true}, src)
	b.ResetTimer()
	cpu0 := cpuTime()
	for n := 0; n < b.N; n++ {
		s.StartSnapshot(SnapshotInfo{LSN: src.start})
		for i := 0; i < 10; i++ {
			if err := s.SnapshotRows(ctx, lines, rows, i == 9); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.FinishSnapshot(ctx); err != nil {
			b.Fatal(err)
		}
	}
	report(b, 10*batch*b.N, cpu0)
}

// BenchmarkKafkaStream applies the benchmark's transactions (an order, its
// three lines, an update of another order) and flushes every 100, into
// one sink (a replay: Resume is not called, so nothing is skipped).
func BenchmarkKafkaStream(b *testing.B) {
	src := newSource(b, benchDDL, "customers", "orders", "order_lines")
	k := startKafka(b)
	ctx := context.Background()
	orders, lines := src.tables[1], src.tables[2]
	const n = 2000
	txns := make([]promoted.Txn, n)
	lsn := promoted.LSN(0x4000000)
	next := func() promoted.LSN { lsn += 0x80; return lsn }
	for i := range txns {
		t := promoted.Txn{Xid: uint32(5000 + i), CommitTime: time.Date(2024, 2, 1, 0, 0, 0, i*1000, time.UTC)}
		id := 100000 + i
		t.Changes = append(t.Changes, promoted.Change{Op: promoted.Insert, Table: orders, LSN: next(), New: orderRow(id, "new", "10.50")})
		for l := 1; l <= 3; l++ {
			t.Changes = append(t.Changes, promoted.Change{Op: promoted.Insert, Table: lines, LSN: next(), New: lineRow(id, l)})
		}
		t.Changes = append(t.Changes, promoted.Change{Op: promoted.Update, Table: orders, LSN: next(), New: orderRow(i+1, "paid", "11.50")})
		t.FinalLSN = next()
		t.EndLSN = t.FinalLSN + 0x30
		txns[i] = t
	}
	s := newSink(b, Config{Brokers: []string{k.Addr()}, Prefix: "bt", Tombstones: true}, src)
	b.ResetTimer()
	cpu0 := cpuTime()
	for r := 0; r < b.N; r++ {
		for i := range txns {
			if err := s.Apply(ctx, &txns[i]); err != nil {
				b.Fatal(err)
			}
			if i%100 == 99 {
				if err := s.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := s.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	}
	report(b, 5*n*b.N, cpu0)
}

// BenchmarkKafkaEncode measures encoding alone (snapshot rows of
// order_lines and orders into batches that are then dropped): the sink's
// own cost per record, without the broker's.
func BenchmarkKafkaEncode(b *testing.B) {
	src := newSource(b, benchDDL, "customers", "orders", "order_lines")
	s, err := New(Config{Brokers: []string{"127.0.0.1:1"}, Prefix: "be", Tombstones: true}, src.tables, src.types, quiet)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	s.StartSnapshot(SnapshotInfo{LSN: src.start})
	var held []heldRow
	for i := 0; i < 4000; i++ {
		held = append(held, heldRow{te: s.order[2], row: lineRow(i/3+1, i%3+1)}, heldRow{te: s.order[1], row: orderRow(i+1, "paid", "11.50")})
	}
	for _, te := range s.order {
		s.partitions[te.topic] = 3
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	defer func() { report(b, b.N, cpu0) }()
	for i := 0; i < b.N; i++ {
		s.snap.held = &held[i%len(held)]
		if err := s.releaseHeld(ctx, false); err != nil {
			b.Fatal(err)
		}
		if s.cur.bytes >= s.cfg.FlushBytes {
			for _, p := range s.cur.parts {
				for _, rs := range p.sets {
					s.pool.put(rs.buf)
				}
			}
			s.cur = newBatch()
		}
	}
}
