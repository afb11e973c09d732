package stream

import (
	"bytes"
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/promoted/promoted"
)

// ErrForeignRow reports a row of another tenant in the stream of a table the
// server filters: the publication is not what the move created (a second,
// unfiltered publication, or an ALTER), so nothing more is applied
// (docs/hazards.md 4.6).
type ErrForeignRow struct{ Table string }

// Fatal marks the error as one no retry can fix.
func (e *ErrForeignRow) Fatal() bool { return true }

func (e *ErrForeignRow) Error() string {
	return fmt.Sprintf("a row of another tenant arrived for %s although its publication filters by tenant: the publication was altered during the move; cancel the move with `promoted cancel` and start again", e.Table)
}

// ErrTruncate reports a TRUNCATE of a moved table. Row filters do not apply
// to TRUNCATE, so on a pooled table it removed every tenant's rows; it is
// never replayed (invariant 6, docs/hazards.md 7.2).
type ErrTruncate struct {
	Tables []string
	LSN    promoted.LSN
}

// Fatal marks the error as one no retry can fix.
func (e *ErrTruncate) Fatal() bool { return true }

func (e *ErrTruncate) Error() string {
	return fmt.Sprintf("TRUNCATE of %v on the source at %s: a truncate removes every tenant's rows and is never replayed on the target; the move is stopped with the target untouched: check the source, then `promoted cancel` and start the move again", e.Tables, e.LSN)
}

// filter turns pgoutput row messages into the tenant's Changes.
//
// For a server-filtered table pgoutput already applied the row filter and
// its UPDATE transformations (an update leaving the tenant arrives as a
// DELETE, one entering it as an INSERT); the daemon only checks that every
// row is the tenant's. For a table published unfiltered (its replica
// identity does not cover the tenant column) the daemon decides from the new
// row alone, because the old-key tuple lacks the tenant: an UPDATE whose new
// row is the tenant's may be an entry or an ordinary update, and one whose
// new row is another tenant's may be an exit; both are applied leniently.
type filter struct{}

func tenantIs(t *promoted.Table, row promoted.Row) bool {
	v := row[t.Tenant]
	return v.Kind == promoted.Text && bytes.Equal(v.Data, []byte(t.TenantLiteral))
}

func (filter) insert(r *relation, m *pglogrepl.InsertMessage) (*promoted.Change, error) {
	row, err := r.row(m.Tuple)
	if err != nil {
		return nil, err
	}
	t := r.table
	if !tenantIs(t, row) {
		if t.ServerFilter {
			return nil, &ErrForeignRow{Table: t.String()}
		}
		return nil, nil
	}
	return &promoted.Change{Op: promoted.Insert, Table: t, New: row, Lenient: !t.ServerFilter}, nil
}

func (filter) update(r *relation, m *pglogrepl.UpdateMessage) (*promoted.Change, error) {
	t := r.table
	newRow, err := r.row(m.NewTuple)
	if err != nil {
		return nil, err
	}
	oldRow, err := r.row(m.OldTuple)
	if err != nil {
		return nil, err
	}
	key, keyCols := r.key(oldRow, m.OldTupleType, newRow)
	mine := tenantIs(t, newRow)
	if t.ServerFilter {
		if !mine || (m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld && !tenantIs(t, oldRow)) {
			return nil, &ErrForeignRow{Table: t.String()}
		}
		return &promoted.Change{Op: promoted.Update, Table: t, Key: key, KeyColumns: keyCols, New: newRow}, nil
	}
	if !mine {
		// The new row is another tenant's: if the target holds the key,
		// the row just left the tenant.
		return &promoted.Change{Op: promoted.Delete, Table: t, Key: key, KeyColumns: keyCols, Lenient: true}, nil
	}
	return &promoted.Change{Op: promoted.Update, Table: t, Key: key, KeyColumns: keyCols, New: newRow, Lenient: true}, nil
}

func (filter) delete(r *relation, m *pglogrepl.DeleteMessage) (*promoted.Change, error) {
	t := r.table
	oldRow, err := r.row(m.OldTuple)
	if err != nil {
		return nil, err
	}
	key, keyCols := r.key(oldRow, m.OldTupleType, nil)
	if t.ServerFilter {
		if !tenantIs(t, oldRow) {
			return nil, &ErrForeignRow{Table: t.String()}
		}
		return &promoted.Change{Op: promoted.Delete, Table: t, Key: key, KeyColumns: keyCols}, nil
	}
	return &promoted.Change{Op: promoted.Delete, Table: t, Key: key, KeyColumns: keyCols, Lenient: true}, nil
}

// key picks the columns that identify the row on the target: the primary
// key when the old tuple carries it (or there is no old tuple because the
// identity did not change), else the replica identity columns. Non-identity
// positions of an old-key tuple are placeholders, never real NULLs
// (docs/hazards.md 2.6), so only identity positions are used.
func (r *relation) key(old promoted.Row, oldType uint8, newRow promoted.Row) (promoted.Row, []int) {
	src := old
	if src == nil {
		src = newRow
	}
	if old == nil || oldType == pglogrepl.UpdateMessageTupleTypeOld || r.keyInIdentity {
		return src, nil
	}
	return src, r.identity
}
