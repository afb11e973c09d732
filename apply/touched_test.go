package apply

import (
	"strconv"
	"testing"

	"github.com/promoted/promoted"
)

// The sink keeps at most MaxTouched keys: past that it says its list is
// incomplete (so the re-check compares everything) and lets the keys go,
// whatever the tenant writes, instead of growing without bound.
func TestTouchedStopsAtItsBound(t *testing.T) {
	tbl := &promoted.Table{Name: "t", Columns: []promoted.Column{{Name: "id"}, {Name: "v"}}, PrimaryKey: []int{0}}
	p := &Postgres{}
	p.StartTracking()
	row := func(i int) promoted.Row {
		return promoted.Row{{Kind: promoted.Text, Data: []byte(strconv.Itoa(i))}, {Kind: promoted.Text, Data: []byte("x")}}
	}
	for i := 0; i < MaxTouched; i++ {
		p.trackChange(&promoted.Change{Op: promoted.Insert, Table: tbl, New: row(i)})
		p.trackChange(&promoted.Change{Op: promoted.Update, Table: tbl, New: row(i), Key: row(i)}) // the same key again
	}
	if got := p.Touched(); !got.Complete() || got.Len() != MaxTouched {
		t.Fatalf("after %d keys: complete %v, %d kept", MaxTouched, got.Complete(), got.Len())
	}
	p.trackChange(&promoted.Change{Op: promoted.Update, Table: tbl, New: row(MaxTouched), Key: row(MaxTouched + 1)})
	got := p.Touched()
	if got.Complete() || !got.Overflow || got.Len() != 0 {
		t.Fatalf("one key past the bound: complete %v, overflow %v, %d kept", got.Complete(), got.Overflow, got.Len())
	}
	p.StartTracking()
	p.trackChange(&promoted.Change{Op: promoted.Delete, Table: tbl, Key: row(1)})
	if got := p.Touched(); !got.Complete() || got.Len() != 1 {
		t.Fatalf("after StartTracking again: complete %v, %d kept", got.Complete(), got.Len())
	}
}
