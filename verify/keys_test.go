package verify

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/promoted/promoted"
)

// TestCompareKeysNamesChangedRows re-checks a set of keys: the differing
// ones among them are named, keys outside the set are not looked at, and
// the counts still catch a row removed outside the set.
func TestCompareKeysNamesChangedRows(t *testing.T) {
	it := newItems(t, 20000)
	mustExec(t, it.dst, "DELETE FROM t7.items_moved WHERE tenant_id = 7 AND id = 123")
	mustExec(t, it.dst, "UPDATE t7.items_moved SET name = 'corrupt' WHERE tenant_id = 7 AND id = 4567")
	fill(t, it.dst, "t7.items_moved", 7, 20001, 20001)
	keys := [][]string{{"7", "123"}, {"7", "4567"}, {"7", "20001"}, {"7", "10"}}
	for i := 11; i < 6000; i++ { // more than one query's worth
		keys = append(keys, []string{"7", fmt.Sprint(i)})
	}
	r, err := CompareKeys(context.Background(), it.src, it.dst, it.table, keys, Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantDiff(t, r, []string{"(7,123)"}, []string{"(7,20001)"}, []string{"(7,4567)"})
	if r.Equal() {
		t.Error("a table with differing keys reported equal")
	}

	// Outside the key set only the counts speak.
	mustExec(t, it.dst, "UPDATE t7.items_moved SET name = 'unseen' WHERE tenant_id = 7 AND id = 9000")
	mustExec(t, it.dst, "DELETE FROM t7.items_moved WHERE tenant_id = 7 AND id = 9001")
	r, err = CompareKeys(context.Background(), it.src, it.dst, it.table, [][]string{{"7", "10"}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.SourceRows != 20000 || r.TargetRows != 19999 || r.Equal() {
		t.Errorf("counts %d/%d equal=%v: want 20000/19999 and a difference", r.SourceRows, r.TargetRows, r.Equal())
	}
	wantDiff(t, r, nil, nil, nil)
}

// TestCompareKeySetsInOneQuery re-checks several tables' keys as the check
// under the fence does (no counts): every table's lookups go in one query
// per side, and each table's differing keys are still named under its own
// name. Past one query's worth of keys it falls back to a query per table
// and finds the same.
func TestCompareKeySetsInOneQuery(t *testing.T) {
	it := newItems(t, 8000)
	mustExec(t, it.dst, "DELETE FROM t7.items_moved WHERE tenant_id = 7 AND id = 123")
	mustExec(t, it.dst, "UPDATE t7.items_moved SET name = 'corrupt' WHERE tenant_id = 7 AND id = 4567")
	fill(t, it.dst, "t7.items_moved", 7, 8001, 8001)
	// The same table under two plans stands for two tables.
	a, b, idle := it.table, itemsTable(), itemsTable()
	for _, many := range []bool{false, true} {
		keys := map[*promoted.Table][][]string{
			a: {{"7", "123"}, {"7", "10"}, {"7", "10"}},
			b: {{"7", "4567"}, {"7", "8001"}, {"7", "11"}},
		}
		if many {
			for i := 5000; i < 11000; i++ { // some of them on neither side
				keys[b] = append(keys[b], []string{"7", fmt.Sprint(i)})
			}
		}
		res, err := CompareKeySets(context.Background(), it.src, it.dst, []*promoted.Table{a, idle, b}, keys, Options{NoCounts: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Tables) != 3 || res.Tables[0].Table != a || res.Tables[1].Table != idle || res.Tables[2].Table != b {
			t.Fatalf("many %v: results out of order: %+v", many, res.Tables)
		}
		wantDiff(t, res.Tables[0], []string{"(7,123)"}, nil, nil)
		if !res.Tables[1].Equal() || !res.Tables[1].KeysOnly {
			t.Errorf("many %v: a table without keys: %+v", many, res.Tables[1])
		}
		wantDiff(t, res.Tables[2], nil, []string{"(7,8001)"}, []string{"(7,4567)"})
		if res.Equal() || !strings.Contains(res.Summary(), "rows changed since the last check before the fence") {
			t.Errorf("many %v: summary %q", many, res.Summary())
		}
		if want := int64(2 + len(DistinctKeys(keys[b]))); res.Rows != want {
			t.Errorf("many %v: %d rows compared, want %d (each key once)", many, res.Rows, want)
		}
	}
}
