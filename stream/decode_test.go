package stream

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/promoted/promoted"
)

// capture rewrites the pgoutput captures under testdata/pgoutput from a
// live PostgreSQL (go test ./stream -run TestDecodeCaptured -capture).
var capture = flag.Bool("capture", false, "capture pgoutput messages from PostgreSQL into testdata/pgoutput")

// captures are the scenarios decoded without a server: the exact bytes
// PostgreSQL 15's pgoutput sent for them, and what promoted must make of
// them (golden files beside).
var captures = []struct {
	name         string
	serverFilter bool
	sql          []string // one transaction each
}{
	{"daemon_filter", false, []string{
		`INSERT INTO ev VALUES (7, 1, 1, 'a'), (8, 2, 1, 'b')`,
		`UPDATE ev SET small = 2 WHERE id = 1`,
		`UPDATE ev SET tenant_id = 7 WHERE id = 2`,
		`UPDATE ev SET tenant_id = 9 WHERE id = 1`,
		`UPDATE ev SET id = 20 WHERE id = 2`,
		`DELETE FROM ev WHERE id = 20`,
		`INSERT INTO ev VALUES (7, 3, NULL, NULL)`,
	}},
	{"server_filter_toast", true, []string{
		`INSERT INTO ev SELECT 7, 1, 1, string_agg(md5(i::text), '') FROM generate_series(1, 100) i`,
		`INSERT INTO ev SELECT 8, 2, 1, string_agg(md5(i::text), '') FROM generate_series(1, 100) i`,
		`UPDATE ev SET small = 2 WHERE id = 1`,
		`UPDATE ev SET tenant_id = 7 WHERE id = 2`,
		`UPDATE ev SET tenant_id = 8 WHERE id = 1`,
		`DELETE FROM ev WHERE id = 2`,
	}},
}

// TestDecodeCaptured decodes captured pgoutput messages, with no server,
// into the tenant's changes: filtering by tenant, rows entering and
// leaving it, unchanged TOAST values, key changes, NULLs.
func TestDecodeCaptured(t *testing.T) {
	for _, c := range captures {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join("testdata", "pgoutput", c.name+".bin")
			if *capture {
				captureTo(t, path, c.serverFilter, c.sql)
			}
			msgs, err := readCapture(path)
			if err != nil {
				t.Fatalf("%v (run go test ./stream -run TestDecodeCaptured -capture to capture it)", err)
			}
			got := decode(t, msgs, evTable(c.serverFilter))
			golden := strings.TrimSuffix(path, ".bin") + ".golden"
			if *capture {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("decoded changes differ from %s:\n%s", golden, got)
			}
		})
	}
}

func evTable(serverFilter bool) *promoted.Table {
	tbl := &promoted.Table{Schema: "public", Name: "ev", TargetSchema: "public", TargetName: "ev",
		Columns: []promoted.Column{{Name: "tenant_id", Type: "integer", TypeOID: 23, NotNull: true},
			{Name: "id", Type: "integer", TypeOID: 23, NotNull: true}, {Name: "small", Type: "integer", TypeOID: 23},
			{Name: "big", Type: "text", TypeOID: 25}},
		PrimaryKey: []int{1}, Tenant: 0, ServerFilter: serverFilter, TenantLiteral: "7"}
	if serverFilter {
		tbl.PrimaryKey = []int{0, 1}
	}
	return tbl
}

// decode runs the stream's decoding of each message and describes the
// result, a line per change or transaction boundary.
func decode(t *testing.T, msgs [][]byte, tbl *promoted.Table) string {
	t.Helper()
	s, err := New(Config{Slot: "s", Publication: "p"}, nil, []*promoted.Table{tbl}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, m := range msgs {
		lm, err := parseMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		switch x := lm.(type) {
		case *pglogrepl.RelationMessage:
			r, err := mapRelation(x, tbl)
			if err != nil {
				t.Fatal(err)
			}
			s.rels[x.RelationID] = r
			fmt.Fprintf(&b, "relation %s.%s identity %v\n", x.Namespace, x.RelationName, r.identity)
		case *pglogrepl.BeginMessage:
			b.WriteString("begin\n")
		case *pglogrepl.CommitMessage:
			b.WriteString("commit\n")
		case *pglogrepl.InsertMessage, *pglogrepl.UpdateMessage, *pglogrepl.DeleteMessage:
			c, err := s.change(lm)
			if err != nil {
				fmt.Fprintf(&b, "  error: %v\n", err)
				continue
			}
			if c == nil {
				b.WriteString("  (another tenant's)\n")
				continue
			}
			fmt.Fprintf(&b, "  %s lenient=%v key=%s new=%s\n", c.Op, c.Lenient, rowText(c.Key, keyOf(c)), rowText(c.New, nil))
		}
	}
	return b.String()
}

func keyOf(c *promoted.Change) []int {
	if c.KeyColumns != nil {
		return c.KeyColumns
	}
	return c.Table.PrimaryKey
}

// rowText prints the given columns of a row (all when cols is nil):
// NULL, u for an unchanged TOAST value, or the text, shortened.
func rowText(r promoted.Row, cols []int) string {
	if r == nil {
		return "-"
	}
	if cols == nil {
		for i := range r {
			cols = append(cols, i)
		}
	}
	var out []string
	for _, i := range cols {
		switch r[i].Kind {
		case promoted.Null:
			out = append(out, "NULL")
		case promoted.Unchanged:
			out = append(out, "u")
		default:
			v := string(r[i].Data)
			if len(v) > 12 {
				v = fmt.Sprintf("%s…(%d bytes)", v[:8], len(v))
			}
			out = append(out, v)
		}
	}
	return "(" + strings.Join(out, ",") + ")"
}

// readCapture reads length-prefixed messages.
func readCapture(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for len(data) >= 4 {
		n := binary.BigEndian.Uint32(data)
		if int(n) > len(data)-4 {
			return nil, fmt.Errorf("%s: truncated", path)
		}
		out = append(out, data[4:4+n])
		data = data[4+n:]
	}
	return out, nil
}

// captureTo runs the statements on a fresh database and stores every
// pgoutput message of their transactions, as the walsender sent them.
func captureTo(t *testing.T, path string, serverFilter bool, sql []string) {
	t.Helper()
	f := setup(t, serverFilter)
	for _, q := range sql {
		mustExec(t, f.conn, q)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, _ := pgconn.ParseConfig(f.dsn)
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range promoted.SessionParams {
		cfg.RuntimeParams[k] = v
	}
	repl, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(context.Background())
	if err := pglogrepl.StartReplication(ctx, repl, f.name, f.slot, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'pub'"}}); err != nil {
		t.Fatal(err)
	}
	// Every transaction is flushed before replication starts: a second
	// of silence means all of them were sent (pgoutput skips those left
	// empty by the row filter).
	var out []byte
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		msg, err := repl.ReceiveMessage(rctx)
		rcancel()
		if err != nil {
			if pgconn.Timeout(err) && len(out) > 0 {
				break
			}
			t.Fatal(err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 || cd.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		x, err := pglogrepl.ParseXLogData(cd.Data[1:])
		if err != nil {
			t.Fatal(err)
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(x.WALData)))
		out = append(out, x.WALData...)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
