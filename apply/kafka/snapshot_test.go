package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestKafkaSnapshotResume fails a snapshot in the middle of its second
// table (produce requests to one partition refused), then resumes with a
// new sink: Resume says the first table is complete and from which key
// the second continues, and the resumed snapshot leaves every row of both
// tables in the topics.
func TestKafkaSnapshotResume(t *testing.T) {
	src := newSource(t, `
		CREATE TABLE a (tenant_id int NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
		CREATE TABLE b (tenant_id int NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
		INSERT INTO a SELECT 7, g, 'a' || g FROM generate_series(1, 20) g;
		INSERT INTO b SELECT 7, g, 'b' || g FROM generate_series(1, 60) g;
		INSERT INTO b SELECT 8, g, 'other tenant' FROM generate_series(1, 10) g;`, "a", "b")
	k := startKafka(t)
	ctx := context.Background()
	cfg := Config{Brokers: []string{k.Addr()}, Prefix: "snap", Tombstones: true, Timeout: 5 * time.Second}
	snapshot := func(s *Sink, progress map[string]SnapshotProgress) error {
		tx, err := src.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		s.StartSnapshot(SnapshotInfo{LSN: src.start})
		for _, tbl := range src.tables {
			p := progress[tbl.String()]
			if p.Complete {
				continue
			}
			if err := s.SnapshotTable(ctx, src.conn, tbl, p.After, 5); err != nil {
				return err
			}
		}
		return s.FinishSnapshot(ctx)
	}
	// Table a takes 4 batches of 5 rows, each at most 3 produce requests;
	// refuse partition 2 from well into table b on.
	stop := failPartition(k, 4*3+6)
	s1 := newSink(t, cfg, src)
	err := snapshot(s1, nil)
	stop()
	if err == nil {
		t.Fatal("the snapshot did not fail")
	}
	s2 := newSink(t, cfg, src)
	res, err := s2.Resume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pa, pb := res.Snapshot["public.a"], res.Snapshot["public.b"]
	t.Logf("resume: a %+v, b %+v", pa, pb)
	if !pa.Complete || pb.Complete || pb.After == nil {
		t.Fatalf("Resume says a %+v, b %+v: want a complete and b to continue after a key", pa, pb)
	}
	if err := snapshot(s2, res.Snapshot); err != nil {
		t.Fatal(err)
	}
	state, err := Fold(ctx, cfg, src.tables, src.types)
	if err != nil {
		t.Fatal(err)
	}
	for _, tbl := range src.tables {
		want := src.sourceRows(t, tbl)
		got := state[tbl.String()]
		if len(got) != len(want) {
			t.Fatalf("%s: %d rows in the topic, %d in the source", tbl, len(got), len(want))
		}
		for key, row := range want {
			if got[key] == nil || *got[key]["note"] != *row["note"] {
				t.Fatalf("%s row %s: topic %v, source %v", tbl, key, got[key], row)
			}
		}
	}
}
