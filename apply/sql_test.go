package apply

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/promoted/promoted"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// sqlTable has what the statements must handle: a key of two columns, an
// identity ALWAYS column, a generated column, a quote in a name, and a
// target schema and name of its own.
func sqlTable() *promoted.Table {
	return &promoted.Table{Schema: "public", Name: "orders", TargetSchema: `tenant "42"`, TargetName: "orders",
		Columns: []promoted.Column{
			{Name: "tenant_id", Type: "bigint", TypeOID: 20, NotNull: true},
			{Name: "id", Type: "bigint", TypeOID: 20, NotNull: true, Identity: 'a'},
			{Name: "it's", Type: "text", TypeOID: 25},
			{Name: "total", Type: "numeric(12,2)", TypeOID: 1700},
			{Name: "doubled", Type: "numeric", TypeOID: 1700, Generated: true},
		},
		PrimaryKey: []int{0, 1}, Tenant: 0, ServerFilter: true, TenantLiteral: "42"}
}

// TestStatementsGolden pins the SQL the apply sends for each kind of
// change (no server needed): values are parameters, never text in the
// statement; generated columns are left to the target; identity ALWAYS
// keys are inserted with OVERRIDING SYSTEM VALUE and never assigned.
func TestStatementsGolden(t *testing.T) {
	tbl := sqlTable()
	byID := sqlTable()
	byID.PrimaryKey = []int{1}
	var s statements
	all := []int{0, 1, 2, 3}
	settableCols := []int{0, 2, 3}
	var b strings.Builder
	for _, c := range []struct{ what, sql string }{
		{"insert", s.insert(tbl, all)},
		{"insert of 3 rows", s.insertRows(tbl, all, 3)},
		{"upsert (daemon-filtered tables)", s.upsert(tbl, all)},
		{"upsert with nothing to set", s.upsert(tbl, []int{0, 1})},
		{"update by primary key", s.update(tbl, settableCols, tbl.PrimaryKey)},
		{"update by replica identity", s.update(tbl, []int{3}, []int{1})},
		{"delete", s.delete(tbl, tbl.PrimaryKey)},
		{"upsert of 2 rows", s.upsertRows(tbl, all, 2)},
		{"set-based update of 2 rows", s.updateRows(tbl, settableCols, tbl.PrimaryKey, 2)},
		{"set-based delete of 2 rows", s.deleteRows(tbl, tbl.PrimaryKey, 2)},
		// A pooled target keyed by (id) alone (a demotion): every UPDATE
		// and DELETE, and an upsert's update, carries the tenant.
		{"update of a table keyed without the tenant", s.update(byID, settableCols, byID.PrimaryKey)},
		{"delete of a table keyed without the tenant", s.delete(byID, byID.PrimaryKey)},
		{"upsert of a table keyed without the tenant", s.upsertRows(byID, all, 2)},
		{"set-based update of a table keyed without the tenant", s.updateRows(byID, settableCols, byID.PrimaryKey, 2)},
		{"set-based delete of a table keyed without the tenant", s.deleteRows(byID, byID.PrimaryKey, 2)},
	} {
		b.WriteString("-- " + c.what + "\n" + c.sql + ";\n")
	}
	golden(t, "statements.sql", b.String())
	if got := present(tbl, promoted.Row{{Kind: promoted.Text}, {Kind: promoted.Text}, {Kind: promoted.Unchanged}, {Kind: promoted.Null}, {Kind: promoted.Unchanged}}, writable); len(got) != 3 {
		t.Errorf("present columns %v: an unchanged TOAST value must be left out, a NULL kept", got)
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./apply -run TestStatementsGolden -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("generated SQL differs from %s (run with -update if the change is intended):\n%s", path, got)
	}
}
