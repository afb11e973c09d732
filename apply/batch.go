package apply

import (
	"slices"
	"strconv"
	"strings"

	"github.com/promoted/promoted"
)

// pendingInserts collects consecutive plain inserts into one table with the
// same columns, so a backlog's inserts travel as multi-row INSERTs: one
// statement for up to maxRowsPerInsert rows instead of one per row, which
// is most of the apply's cost when the source wrote many rows.
type pendingInserts struct {
	table  *promoted.Table
	cols   []int
	first  *promoted.Change
	params [][]byte
	rows   int
}

// maxRowsPerInsert bounds a multi-row INSERT; flushes use 64, 16, 4 and 1
// rows, so each table prepares at most four of them.
const maxRowsPerInsert = 64

// addInsert queues a plain insert, merging it with the pending ones when
// it goes to the same table and columns.
func (p *Postgres) addInsert(c *promoted.Change, cols []int) {
	pi := &p.pendIns
	if pi.rows > 0 && (pi.table != c.Table || !slices.Equal(pi.cols, cols)) {
		p.flushInserts()
	}
	if pi.rows == 0 {
		pi.table, pi.cols, pi.first = c.Table, cols, c
	}
	pi.params = append(pi.params, params(c.New, cols)...)
	pi.rows++
	if pi.rows == maxRowsPerInsert {
		p.flushInserts()
	}
}

// flushInserts queues the pending inserts, in order, as a few multi-row
// statements, each checked to insert exactly its rows.
func (p *Postgres) flushInserts() {
	pi := &p.pendIns
	if pi.rows == 0 {
		return
	}
	rows, prm := pi.rows, pi.params
	pi.rows, pi.params = 0, nil
	n := len(pi.cols)
	for _, size := range []int{64, 16, 4, 1} {
		for rows >= size {
			p.queueRaw(p.sql.insertRows(pi.table, pi.cols, size), prm[:size*n], check{c: pi.first, rows: int64(size)})
			prm, rows = prm[size*n:], rows-size
		}
	}
}

// insertRows is INSERT of rows rows of the given columns.
func (s statements) insertRows(t *promoted.Table, cols []int, rows int) string {
	one := s.insert(t, cols)
	if rows == 1 {
		return one
	}
	var b strings.Builder
	b.WriteString(one)
	for r := 1; r < rows; r++ {
		b.WriteString(", (")
		for i := range cols {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("$" + strconv.Itoa(r*len(cols)+i+1))
		}
		b.WriteString(")")
	}
	return b.String()
}
