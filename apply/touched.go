package apply

import (
	"strings"

	"github.com/promoted/promoted"
)

// Touched is the set of rows the sink changed since tracking started, by
// primary key, so the cutover can re-check only those rows under the fence
// after a full verification at a consistent point just before it.
type Touched struct {
	// Keys holds each table's touched primary keys, as the key columns'
	// text values in primary-key order.
	Keys map[*promoted.Table][][]string
	// Whole lists tables whose changes did not all carry the primary key
	// (a replica identity other than the key): they need a full check.
	Whole map[*promoted.Table]bool
	// Overflow is set when more than MaxTouched rows were changed: the
	// keys kept are incomplete, and a full check is needed.
	Overflow bool
}

// Len is the number of touched keys kept.
func (t Touched) Len() int {
	n := 0
	for _, ks := range t.Keys {
		n += len(ks)
	}
	return n
}

// Complete reports whether the keys cover every row changed: else only a
// full comparison covers them.
func (t Touched) Complete() bool { return !t.Overflow && len(t.Whole) == 0 }

// MaxTouched bounds the keys the sink keeps in memory: past it the
// re-check compares everything instead, which at that many rows costs
// little more than looking each one up.
const MaxTouched = 100_000

type tracker struct {
	on       bool
	n        int
	overflow bool
	seen     map[*promoted.Table]map[string]bool
	keys     map[*promoted.Table][][]string
	whole    map[*promoted.Table]bool
}

// StartTracking forgets what was tracked and records every row changed
// from the next change on. Call it only where no change is being applied
// (the live-verification gate holds the apply).
func (p *Postgres) StartTracking() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tracking.Store(true)
	p.track = tracker{on: true, seen: map[*promoted.Table]map[string]bool{}, keys: map[*promoted.Table][][]string{}, whole: map[*promoted.Table]bool{}}
}

// Touched returns the rows changed since StartTracking.
func (p *Postgres) Touched() Touched {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := Touched{Keys: map[*promoted.Table][][]string{}, Whole: map[*promoted.Table]bool{}}
	for k, v := range p.track.keys {
		t.Keys[k] = append([][]string(nil), v...)
	}
	for k, v := range p.track.whole {
		t.Whole[k] = v
	}
	t.Overflow = p.track.overflow
	return t
}

func (p *Postgres) trackChange(c *promoted.Change) {
	if !p.tracking.Load() {
		return // the common case: no lock on the apply's hot path
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.track.on || p.track.overflow || c.Op == promoted.Message {
		return
	}
	t := c.Table
	add := func(row promoted.Row) {
		if p.track.overflow {
			return
		}
		key := make([]string, len(t.PrimaryKey))
		for i, k := range t.PrimaryKey {
			if k >= len(row) || row[k].Kind != promoted.Text {
				p.track.whole[t] = true
				return
			}
			key[i] = string(row[k].Data)
		}
		id := strings.Join(key, "\x00")
		if p.track.seen[t] == nil {
			p.track.seen[t] = map[string]bool{}
		}
		if !p.track.seen[t][id] {
			if p.track.n >= MaxTouched {
				p.track.overflow = true
				p.track.seen, p.track.keys = nil, nil // let the memory go
				return
			}
			p.track.n++
			p.track.seen[t][id] = true
			p.track.keys[t] = append(p.track.keys[t], key)
		}
	}
	if c.New != nil {
		add(c.New)
	}
	if c.Op == promoted.Update || c.Op == promoted.Delete {
		if c.KeyColumns != nil {
			p.track.whole[t] = true
			return
		}
		add(c.Key)
	}
}
