package verify

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/promoted/promoted"
)

// Identical rows across tens of thousands of rows are equal from the
// totals alone, whatever the other tenants hold on either side.
func TestIdenticalRowsAreEqual(t *testing.T) {
	it := newItems(t, 30000)
	res := compare(t, it.src, it.dst, Options{}, it.table)
	r := res.Tables[0]
	if !res.Equal() || !r.Equal() || res.Summary() != "" {
		t.Fatalf("identical rows reported different: %s", res.Summary())
	}
	if r.SourceRows != 30000 || r.TargetRows != 30000 || res.Rows != 30000 {
		t.Errorf("rows %d/%d (result %d), want 30000", r.SourceRows, r.TargetRows, res.Rows)
	}
	if r.SourceHash != r.TargetHash || r.SourceHash == "0" || r.SourceHash == "" {
		t.Errorf("hashes %q/%q", r.SourceHash, r.TargetHash)
	}
	if r.Ranges != 0 {
		t.Errorf("equal totals still compared %d ranges", r.Ranges)
	}
	var all int64
	it.src.QueryRow(context.Background(), "SELECT count(*) FROM pool.items").Scan(&all)
	if all <= 30000 {
		t.Fatalf("the source holds no other tenant (%d rows)", all)
	}
}

// A corrupted, a missing and an extra row among 20,000 are each named by
// key, after bisecting rather than listing the table.
func TestNamesDifferingKeys(t *testing.T) {
	it := newItems(t, 20000)
	mustExec(t, it.dst, "DELETE FROM t7.items_moved WHERE tenant_id = 7 AND id = 123")
	mustExec(t, it.dst, "UPDATE t7.items_moved SET name = 'corrupt' WHERE tenant_id = 7 AND id = 4567")
	fill(t, it.dst, "t7.items_moved", 7, 20001, 20001)
	// Other tenants' differences are outside the comparison.
	mustExec(t, it.src, "DELETE FROM pool.items WHERE tenant_id = 8 AND id = 5")
	mustExec(t, it.dst, "DELETE FROM t7.items_moved WHERE tenant_id = 9 AND id = 5")
	res := compare(t, it.src, it.dst, Options{}, it.table)
	r := res.Tables[0]
	wantDiff(t, r, []string{"(7,123)"}, []string{"(7,20001)"}, []string{"(7,4567)"})
	if r.SourceRows != 20000 || r.TargetRows != 20000 {
		t.Errorf("rows %d/%d, want 20000 on both sides", r.SourceRows, r.TargetRows)
	}
	if r.Ranges == 0 || r.Ranges > 100 {
		t.Errorf("compared %d ranges, want a bisection (a few dozen)", r.Ranges)
	}
	if r.OrderDiffers {
		t.Errorf("integer keys reported as ordered differently")
	}
	want := "pool.items: 20000 rows on the source, 20000 on the target; missing from the target (7,123); extra on the target (7,20001); different (7,4567)"
	if got := res.Summary(); got != want {
		t.Errorf("summary\n%s\nwant\n%s", got, want)
	}
}

// Each mutation of docs/hazards.md 10.2 is detected and named, on a target read
// through a transaction (the way a caller passes an imported snapshot).
func TestDetectsMutations(t *testing.T) {
	it := newItems(t, 3000)
	ctx := context.Background()
	cases := []struct {
		name                      string
		sql                       string
		missing, extra, different []string
	}{
		{name: "minus zero becomes zero", sql: "UPDATE t7.items_moved SET f = 0 WHERE tenant_id = 7 AND id = 100",
			different: []string{"(7,100)"}},
		{name: "NaN becomes minus zero", sql: "UPDATE t7.items_moved SET f = '-0' WHERE tenant_id = 7 AND id = 201",
			different: []string{"(7,201)"}},
		{name: "two rows swap a value", sql: `UPDATE t7.items_moved m SET name = o.name FROM t7.items_moved o
		    WHERE m.tenant_id = 7 AND o.tenant_id = 7 AND (m.id, o.id) IN ((10, 12), (12, 10))`,
			different: []string{"(7,10)", "(7,12)"}},
		{name: "a column becomes NULL", sql: "UPDATE t7.items_moved SET amount = NULL WHERE tenant_id = 7 AND id = 50",
			different: []string{"(7,50)"}},
		{name: "a NULL array element becomes empty", sql: "UPDATE t7.items_moved SET tags[2] = '' WHERE tenant_id = 7 AND id = 2999",
			different: []string{"(7,2999)"}},
		{name: "one microsecond later", sql: "UPDATE t7.items_moved SET at = at + interval '1 microsecond' WHERE tenant_id = 7 AND id = 1500",
			different: []string{"(7,1500)"}},
		{name: "a nested json value", sql: `UPDATE t7.items_moved SET doc = jsonb_set(doc, '{nested,1}', '"y"') WHERE tenant_id = 7 AND id = 1`,
			different: []string{"(7,1)"}},
		{name: "a json number gains trailing zeros (equal as jsonb, not as text)", sql: `UPDATE t7.items_moved SET doc = jsonb_set(doc, '{r}', to_jsonb((doc->>'r')::numeric(40,30))) WHERE tenant_id = 7 AND id = 3`,
			different: []string{"(7,3)"}},
		{name: "a byte flips", sql: "UPDATE t7.items_moved SET blob = set_byte(blob, 0, get_byte(blob, 0) # 1) WHERE tenant_id = 7 AND id = 2000",
			different: []string{"(7,2000)"}},
		{name: "a row is deleted", sql: "DELETE FROM t7.items_moved WHERE tenant_id = 7 AND id = 3000",
			missing: []string{"(7,3000)"}},
		{name: "a key changes", sql: "UPDATE t7.items_moved SET id = 100000 WHERE tenant_id = 7 AND id = 80",
			missing: []string{"(7,80)"}, extra: []string{"(7,100000)"}},
		{name: "a row moves to another tenant", sql: "UPDATE t7.items_moved SET tenant_id = 9 WHERE tenant_id = 7 AND id = 600",
			missing: []string{"(7,600)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := it.dst.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if tag := mustExec(t, tx, tc.sql); tag.RowsAffected() == 0 {
				t.Fatalf("the mutation changed nothing")
			}
			res := compare(t, it.src, tx, Options{}, it.table)
			wantDiff(t, res.Tables[0], tc.missing, tc.extra, tc.different)
		})
	}
	if res := compare(t, it.src, it.dst, Options{}, it.table); !res.Equal() {
		t.Fatalf("rolled back target differs: %s", res.Summary())
	}
}

// A target that lacks every row costs a bounded drill-down and reports the
// first MaxKeys keys; so does a target holding rows the source lacks.
func TestOneSidedTablesAreTruncated(t *testing.T) {
	it := newItems(t, 5000)
	mustExec(t, it.dst, "DELETE FROM t7.items_moved WHERE tenant_id = 7 AND id > 10")
	res := compare(t, it.src, it.dst, Options{MaxKeys: 5}, it.table)
	r := res.Tables[0]
	wantKeys(t, "missing", r.Missing, "(7,11)", "(7,12)", "(7,13)", "(7,14)", "(7,15)")
	if !r.Truncated || r.Equal() || len(r.Extra)+len(r.Different) != 0 {
		t.Errorf("truncated %v, extra %q, different %q", r.Truncated, r.Extra, r.Different)
	}
	if !strings.HasSuffix(res.Summary(), "; and more") {
		t.Errorf("summary %q does not say there is more", res.Summary())
	}

	mustExec(t, it.src, "DELETE FROM pool.items WHERE tenant_id = 7")
	res = compare(t, it.src, it.dst, Options{MaxKeys: 3, LeafRows: 2}, it.table)
	r = res.Tables[0]
	wantKeys(t, "extra", r.Extra, "(7,1)", "(7,2)", "(7,3)")
	if !r.Truncated || r.SourceRows != 0 || r.TargetRows != 10 {
		t.Errorf("truncated %v, rows %d/%d", r.Truncated, r.SourceRows, r.TargetRows)
	}
}

// Compare refuses sessions that print values differently from
// promoted.SessionParams, because a different extra_float_digits changes a
// float8's text and so its row's hash (and a different TimeZone a
// timestamptz's text, which the drill-down's row listing compares): pinned
// sessions are equal.
func TestSessionSettingsArePinned(t *testing.T) {
	it := newItems(t, 1000)
	other := connect(t, it.dstDSN, map[string]string{"extra_float_digits": "0"})
	pinned, unpinned := checksum(t, it.dst, it.table, true), checksum(t, other, it.table, true)
	if pinned.n != unpinned.n || pinned.hash == unpinned.hash {
		t.Fatalf("extra_float_digits did not change the checksum: %v and %v", pinned, unpinned)
	}
	var a, b string
	row := `SELECT ROW(f)::text FROM t7.items_moved WHERE tenant_id = 7 AND id = 4`
	it.dst.QueryRow(context.Background(), row).Scan(&a)
	other.QueryRow(context.Background(), row).Scan(&b)
	t.Logf("the same float8 prints %s with extra_float_digits 3 and %s with 0", a, b)

	_, err := Compare(context.Background(), it.src, other, []*promoted.Table{it.table}, Options{})
	if err == nil || !strings.Contains(err.Error(), "extra_float_digits") || !strings.Contains(err.Error(), "target") {
		t.Fatalf("an unpinned target session was not refused: %v", err)
	}
	tz := connect(t, it.dstDSN, map[string]string{"TimeZone": "America/New_York"})
	_, err = Compare(context.Background(), it.src, tz, []*promoted.Table{it.table}, Options{})
	if err == nil || !strings.Contains(err.Error(), "TimeZone") {
		t.Fatalf("a target session in another time zone was not refused: %v", err)
	}
	if res := compare(t, it.src, it.dst, Options{}, it.table); !res.Equal() {
		t.Fatalf("pinned sessions differ: %s", res.Summary())
	}
}

// The canonical row text orders columns by name and leaves generated
// columns out.
func TestCanonicalColumns(t *testing.T) {
	got := canonicalColumns(itemsTable())
	want := `"amount", "at", "blob", "doc", "f", "id", "name", "note", "tags", "tenant_id"`
	if strings.Join(got, ", ") != want {
		t.Errorf("canonical columns %s, want %s (by name, without the generated column)", strings.Join(got, ", "), want)
	}
}

// Throughput of the whole-table comparison, for the log only.
func TestThroughput(t *testing.T) {
	const rows = 200000
	it := newItems(t, rows)
	start := time.Now()
	res := compare(t, it.src, it.dst, Options{}, it.table)
	took := time.Since(start)
	if !res.Equal() {
		t.Fatalf("identical rows differ: %s", res.Summary())
	}
	t.Logf("compared %d identical rows in %s: %.0f rows/s", res.Rows, took.Round(time.Millisecond), float64(res.Rows)/took.Seconds())

	ctx := context.Background()
	tx, err := it.dst.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	mustExec(t, tx, "UPDATE t7.items_moved SET note = 'x' WHERE tenant_id = 7 AND id IN (7, 99999, 199999)")
	start = time.Now()
	res = compare(t, it.src, tx, Options{}, it.table)
	took = time.Since(start)
	wantDiff(t, res.Tables[0], nil, nil, []string{"(7,7)", "(7,99999)", "(7,199999)"})
	t.Logf("named 3 differing rows among %d in %s (%d ranges): %.0f rows/s", res.Rows, took.Round(time.Millisecond),
		res.Tables[0].Ranges, float64(res.Rows)/took.Seconds())
}
