package verify

// kind is what a differing key is.
type kind uint8

const (
	missing   kind = iota // on the source only
	extra                 // on the target only
	different             // on both, with different values
)

// finding is one differing key, in the order it was found.
type finding struct {
	kind kind
	key  string
	hash string
	// gone is set when a later range showed the key on the other side with
	// the same hash.
	gone bool
}

// diff collects the differing keys of one table across the listed ranges.
//
// A key listed on one side only is held as pending until the end: when the
// two sides order keys differently (a text key under different collations,
// docs/hazards.md 10.3), the same row can fall into one range on the source and
// another on the target, and the second listing then cancels the first.
// Under one ordering nothing is ever cancelled and every finding is final.
type diff struct {
	max     int
	found   []*finding
	live    int
	srcOnly map[string]*finding
	dstOnly map[string]*finding
}

func newDiff(maxKeys int) *diff {
	return &diff{max: maxKeys, srcOnly: map[string]*finding{}, dstOnly: map[string]*finding{}}
}

// full reports that more keys were found than can be reported, so drilling
// further would only cost queries.
func (d *diff) full() bool { return d.live > d.max }

// room is how many more keys can be reported.
func (d *diff) room() int { return max(d.max-d.live, 0) }

func (d *diff) note(k kind, key, hash string) *finding {
	f := &finding{kind: k, key: key, hash: hash}
	d.found = append(d.found, f)
	d.live++
	return f
}

// add diffs the listing of one range on both sides. It reports whether a
// key listed on one side only earlier turned up in this range on the other
// side, which proves the two sides order the keys differently.
func (d *diff) add(src, dst []keyHash) (crossed bool) {
	onDst := make(map[string]string, len(dst))
	for _, r := range dst {
		onDst[r.key] = r.hash
	}
	onSrc := make(map[string]bool, len(src))
	for _, r := range src {
		onSrc[r.key] = true
		if h, ok := onDst[r.key]; ok {
			if h != r.hash {
				d.note(different, r.key, "")
			}
			continue
		}
		if f, ok := d.dstOnly[r.key]; ok {
			d.resolve(d.dstOnly, f, r.hash)
			crossed = true
			continue
		}
		d.srcOnly[r.key] = d.note(missing, r.key, r.hash)
	}
	for _, r := range dst {
		if onSrc[r.key] {
			continue
		}
		if f, ok := d.srcOnly[r.key]; ok {
			d.resolve(d.srcOnly, f, r.hash)
			crossed = true
			continue
		}
		d.dstOnly[r.key] = d.note(extra, r.key, r.hash)
	}
	return crossed
}

// resolve matches a pending one-sided key with its listing on the other
// side: the same row cancels it, another value makes it different.
func (d *diff) resolve(pending map[string]*finding, f *finding, hash string) {
	delete(pending, f.key)
	if f.hash == hash {
		f.gone = true
		d.live--
		return
	}
	f.kind = different
}

// report splits the first max findings into the three lists.
func (d *diff) report() (miss, ext, differ []string, truncated bool) {
	n := 0
	for _, f := range d.found {
		if f.gone {
			continue
		}
		if n++; n > d.max {
			return miss, ext, differ, true
		}
		switch f.kind {
		case missing:
			miss = append(miss, f.key)
		case extra:
			ext = append(ext, f.key)
		default:
			differ = append(differ, f.key)
		}
	}
	return miss, ext, differ, false
}
