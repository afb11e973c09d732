package apply

import (
	"context"
	"fmt"
	"strings"
	"testing"

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
