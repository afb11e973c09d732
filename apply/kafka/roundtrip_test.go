package kafka

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// TestKafkaGoldenSnapshotAndHeartbeat writes a snapshot of two tables
// (read with SnapshotTable inside a REPEATABLE READ transaction) and a
// heartbeat, and compares the records with the golden files. Debezium
// 2.7 marks the first row "first", each table's first and last rows
// "first_in_data_collection" / "last_in_data_collection" and the very
// last row "last" (RelationalSnapshotChangeEventSource.setSnapshotMarker).
func TestKafkaGoldenSnapshotAndHeartbeat(t *testing.T) {
	src := newSource(t, typesDDL, "types", "other")
	src.types.Database = "postgres" // test databases are numbered by creation order
	mustExec(t, src.conn, typesInsert)
	mustExec(t, src.conn, `INSERT INTO other VALUES (7, 1, 'one'), (7, 2, 'two'), (7, 3, 'three'), (8, 4, 'not the tenant')`)
	k := startKafka(t)
	ctx := context.Background()
	s := newSink(t, Config{Brokers: []string{k.Addr()}, Prefix: "dbserver1", Tombstones: true, HeartbeatInterval: time.Millisecond}, src)
	tx, err := src.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	s.StartSnapshot(SnapshotInfo{LSN: 0x2000000, TxID: 777})
	for _, tbl := range src.tables {
		if err := s.SnapshotTable(ctx, src.conn, tbl, nil, 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.FinishSnapshot(ctx); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	golden(t, "snapshot.golden", dump(t, k.Addr(), "dbserver1.public.types", "dbserver1.public.other"))

	if err := s.Apply(ctx, &promoted.Txn{EndLSN: 0x2000100}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Durable() != 0x2000100 {
		t.Fatalf("Durable %s after a heartbeat, want 0/2000100", s.Durable())
	}
	golden(t, "heartbeat.golden", dump(t, k.Addr(), "__debezium-heartbeat.dbserver1"))
}

// TestKafkaRoundTrip streams real changes (every type family, TOAST, key
// change, delete) through the sink into the broker, folds the topics back
// with Fold, and compares each row, column by column, with the source.
func TestKafkaRoundTrip(t *testing.T) {
	src := newSource(t, typesDDL, "types", "other")
	for _, q := range typesDML {
		mustExec(t, src.conn, q)
	}
	txns := src.stream(t, 9)
	k := startKafka(t)
	ctx := context.Background()
	for _, mode := range []string{DecimalPrecise, DecimalString, DecimalDouble} {
		cfg := Config{Brokers: []string{k.Addr()}, Prefix: "rt_" + mode, Tombstones: true, TransactionMetadata: true, DecimalHandling: mode}
		s := newSink(t, cfg, src)
		for i := range txns {
			if err := s.Apply(ctx, &txns[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if s.Durable() != txns[len(txns)-1].EndLSN {
			t.Fatalf("Durable %s, want %s", s.Durable(), txns[len(txns)-1].EndLSN)
		}
		state, err := Fold(ctx, cfg, src.tables, src.types)
		if err != nil {
			t.Fatal(err)
		}
		compareState(t, src, state, mode)
	}
}

// compareState checks the folded topics against the source's rows.
func compareState(t *testing.T, src *srcDB, state State, mode string) {
	t.Helper()
	for _, tbl := range src.tables {
		want := src.sourceRows(t, tbl)
		got := state[tbl.String()]
		if len(got) != len(want) {
			t.Fatalf("%s %s: folded %d rows, source has %d", mode, tbl, len(got), len(want))
		}
		for key, wrow := range want {
			grow, ok := got[key]
			if !ok {
				t.Fatalf("%s %s: row %s missing from the topic", mode, tbl, key)
			}
			for _, c := range tbl.Columns {
				if lossy(c, mode) {
					continue
				}
				gv, present := grow[c.Name]
				if !present {
					if c.Generated || c.Name == "tsv" {
						continue
					}
					t.Fatalf("%s %s row %s: column %s missing", mode, tbl, key, c.Name)
				}
				if !src.sameValue(t, c.Type, gv, wrow[c.Name]) {
					t.Errorf("%s %s row %s column %s (%s): topic says %s, source %s", mode, tbl, key, c.Name, c.Type, show(gv), show(wrow[c.Name]))
				}
			}
		}
	}
}

// lossy names the columns whose value Debezium's format does not keep:
// interval becomes microseconds with 365.25/12-day months, timetz loses
// its offset (compared at UTC by sameValue), double decimals their digits.
func lossy(c promoted.Column, mode string) bool {
	switch {
	case c.Type == "interval":
		return true
	case mode == DecimalDouble && (strings.HasPrefix(c.Type, "numeric") || c.Type == "money"):
		return true
	}
	return false
}

func show(v *string) string {
	if v == nil {
		return "NULL"
	}
	return "'" + *v + "'"
}
