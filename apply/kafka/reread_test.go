package kafka

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/promoted/promoted/snapshot"
)

// TestKafkaRereadsUnchangedToast: with --kafka-reread-toast an update that
// leaves a TOASTed column unchanged carries the column's value re-read from
// the source, not Debezium's placeholder; a row deleted on the source since
// keeps the placeholder (its delete's record follows). Without the flag
// both updates carry the placeholder.
func TestKafkaRereadsUnchangedToast(t *testing.T) {
	src := newSource(t, `CREATE TABLE docs (tenant_id int, id int, big text, n int, PRIMARY KEY (tenant_id, id));
ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL`, "docs")
	big := strings.Repeat("0123456789abcdef", 1000) // 16 kB, out of line
	mustExec(t, src.conn, `INSERT INTO docs VALUES (7, 1, $1, 0), (7, 2, $1, 0)`, big)
	mustExec(t, src.conn, `UPDATE docs SET n = 1`)
	mustExec(t, src.conn, `DELETE FROM docs WHERE id = 2`)
	txns := src.stream(t, 3)
	ctx := context.Background()
	for _, reread := range []bool{true, false} {
		k := startKafka(t)
		cfg := Config{Brokers: []string{k.Addr()}, Prefix: "rr", Tombstones: true, RereadToast: reread}
		s := newSink(t, cfg, src)
		f := snapshot.NewFetcher(src.dsn)
		defer f.Close(ctx)
		s.Fetch = f
		for i := range txns {
			if err := s.Apply(ctx, &txns[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		updates := map[float64]string{}
		for _, line := range strings.Split(dump(t, k.Addr(), "rr.public.docs"), "\n") {
			v, ok := strings.CutPrefix(line, "value: ")
			if !ok || v == "(tombstone)" {
				continue
			}
			var rec struct {
				Payload struct {
					Op    string         `json:"op"`
					After map[string]any `json:"after"`
				} `json:"payload"`
			}
			if err := json.Unmarshal([]byte(v), &rec); err != nil {
				t.Fatalf("record value: %v\n%.200s", err, v)
			}
			if rec.Payload.Op == "u" {
				b, _ := rec.Payload.After["big"].(string)
				updates[rec.Payload.After["id"].(float64)] = b
			}
		}
		want1 := Placeholder
		if reread {
			want1 = big
		}
		if len(updates) != 2 || updates[1] != want1 || updates[2] != Placeholder {
			t.Errorf("reread %v: the updates carry big = %.40q (row 1) and %.40q (row 2), want %.40q and the placeholder", reread, updates[1], updates[2], want1)
		}
	}
}
