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
}

type tracker struct {
	on    bool
	seen  map[*promoted.Table]map[string]bool
	keys  map[*promoted.Table][][]string
	whole map[*promoted.Table]bool
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
	return t
}

func (p *Postgres) trackChange(c *promoted.Change) {
	if !p.tracking.Load() {
		return // the common case: no lock on the apply's hot path
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.track.on || c.Op == promoted.Message {
		return
	}
	t := c.Table
	add := func(row promoted.Row) {
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
