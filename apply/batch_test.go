package apply

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// TestMultiRowInsertsKeepOrder applies 150 inserts (sent as 64+64+16+4+1+1
// row statements) followed in the same transaction by an update and a
// delete of rows among them, and a later duplicate insert that must fail
// the whole group.
func TestMultiRowInsertsKeepOrder(t *testing.T) {
	e := newEnv(t)
	s := e.sink(t, nil)
	var changes []promoted.Change
	for i := 1; i <= 150; i++ {
		changes = append(changes, ins(row("7", fmt.Sprint(i), fmt.Sprint(i), text("b"))))
	}
	changes = append(changes, upd(row("7", "150", "1000", text("b"))),
		promoted.Change{Op: promoted.Delete, Table: evTable, Key: row("7", "3", "", null)},
		ins(row("7", "151", "", null)))
	if err := applyAll(t, s, &promoted.Txn{FinalLSN: 200, EndLSN: 210, Changes: changes}); err != nil {
		t.Fatal(err)
	}
	var n, small int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*), (SELECT small FROM ev WHERE id = 150) FROM ev`).Scan(&n, &small); err != nil {
		t.Fatal(err)
	}
	if n != 150 || small != 1000 {
		t.Fatalf("after 151 inserts, an update and a delete: %d rows, row 150 small=%d; want 150 and 1000", n, small)
	}
	// A duplicate inside a batch fails the group: nothing of it commits.
	dup := []promoted.Change{ins(row("7", "500", "", null)), ins(row("7", "10", "", null)), ins(row("7", "501", "", null))}
	err := applyAll(t, e.sink(t, nil), &promoted.Txn{FinalLSN: 300, EndLSN: 310, Changes: dup})
	if err == nil || !strings.Contains(err.Error(), "insert") {
		t.Fatalf("a duplicate insert gave %v, want an error naming the insert", err)
	}
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ev WHERE id IN (500, 501)`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows of the failed group committed (%v)", n, err)
	}
}

// TestRegroupingKeepsEachKeysOrder applies a long random run of inserts,
// updates (key changes included), deletes and re-inserts of a few keys,
// which the sink regroups into set-based statements per table, and
// compares the target with the same changes applied in order in memory:
// every key's changes must keep their order.
func TestRegroupingKeepsEachKeysOrder(t *testing.T) {
	e := newEnv(t)
	s := e.sink(t, nil)
	r := rand.New(rand.NewPCG(7, 7))
	want := map[int]int{} // id -> small
	var changes []promoted.Change
	nextID := 1
	for i := 0; i < 2000; i++ {
		var ids []int
		for id := range want {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		switch op := r.IntN(10); {
		case op < 4 || len(ids) == 0: // insert, sometimes of a key deleted just before
			id := nextID
			nextID++
			if op == 0 && nextID > 3 {
				if _, gone := want[nextID-3]; !gone {
					id = nextID - 3
					nextID--
				}
			}
			if _, taken := want[id]; taken {
				id = nextID
				nextID++
			}
			want[id] = i
			changes = append(changes, ins(row("7", fmt.Sprint(id), fmt.Sprint(i), text("b"))))
		case op < 7: // update in place
			id := ids[r.IntN(len(ids))]
			want[id] = i
			changes = append(changes, upd(row("7", fmt.Sprint(id), fmt.Sprint(i), text("b"))))
		case op < 8: // a key change
			id := ids[r.IntN(len(ids))]
			to := nextID
			nextID++
			delete(want, id)
			want[to] = i
			c := upd(row("7", fmt.Sprint(to), fmt.Sprint(i), text("b")))
			c.Key = row("7", fmt.Sprint(id), "", null)
			changes = append(changes, c)
		default: // delete
			id := ids[r.IntN(len(ids))]
			delete(want, id)
			changes = append(changes, promoted.Change{Op: promoted.Delete, Table: evTable, Key: row("7", fmt.Sprint(id), "", null)})
		}
	}
	var txns []*promoted.Txn
	for i := 0; i < len(changes); i += 37 {
		lsn := promoted.LSN(1000 + i)
		txns = append(txns, &promoted.Txn{Xid: uint32(i + 1), FinalLSN: lsn, EndLSN: lsn + 1, Changes: changes[i:min(i+37, len(changes))]})
	}
	if err := applyAll(t, s, txns...); err != nil {
		t.Fatal(err)
	}
	got := map[int]int{}
	rows, err := e.conn.Query(context.Background(), `SELECT id, small FROM ev WHERE tenant_id = 7`)
	if err != nil {
		t.Fatal(err)
	}
	var id, small int
	if _, err := pgx.ForEachRow(rows, []any{&id, &small}, func() error { got[id] = small; return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after %d changes the target holds %d rows, want %d; first differences: %s", len(changes), len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(got, want map[int]int) string {
	var out []string
	for id, w := range want {
		if g, ok := got[id]; !ok || g != w {
			out = append(out, fmt.Sprintf("id %d: got %v want %d", id, got[id], w))
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			out = append(out, fmt.Sprintf("id %d: extra", id))
		}
	}
	slices.Sort(out)
	return strings.Join(out[:min(5, len(out))], "; ")
}

// TestBatchedUpdateOfAMissingRowIsDivergence: a set-based update that
// finds fewer rows than keys stops the apply like a single one does.
func TestBatchedUpdateOfAMissingRowIsDivergence(t *testing.T) {
	e := newEnv(t)
	s := e.sink(t, nil)
	var changes []promoted.Change
	for i := 1; i <= 20; i++ {
		changes = append(changes, ins(row("7", fmt.Sprint(i), "1", text("b"))))
	}
	if err := applyAll(t, s, &promoted.Txn{FinalLSN: 200, EndLSN: 201, Changes: changes}); err != nil {
		t.Fatal(err)
	}
	changes = nil
	for i := 1; i <= 20; i++ {
		changes = append(changes, upd(row("7", fmt.Sprint(i*2), "2", text("b")))) // half of these keys do not exist
	}
	err := applyAll(t, e.sink(t, nil), &promoted.Txn{FinalLSN: 300, EndLSN: 301, Changes: changes})
	var div *ErrDiverged
	if !errors.As(err, &div) {
		t.Fatalf("updates of missing rows gave %v, want divergence", err)
	}
	t.Logf("%v", err)
}
