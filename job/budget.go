package job

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
)

// ByteSize is a flag value of bytes that also reads 512MB, 8GB or 1TiB.
type ByteSize int64

func (b *ByteSize) String() string { return formatBytes(int64(*b)) }

// Set parses a size: a number of bytes, or one with a kB, MB, GB or TB
// suffix (powers of 1024, as PostgreSQL reads them; KiB, MiB... too).
func (b *ByteSize) Set(s string) error {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a size: pass bytes, or a number with kB, MB, GB or TB", s)
	}
	*b = ByteSize(n * float64(mult))
	return nil
}

// Type names the flag's value in help.
func (b *ByteSize) Type() string { return "size" }

// FormatBytes prints a byte count the way --max-retained-wal reads one
// (8GB, 1.5MB), for messages and `promoted status`.
func FormatBytes(n int64) string { return formatBytes(n) }

func formatBytes(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
		if n >= u.size {
			return strconv.FormatFloat(float64(n)/float64(u.size), 'f', 1, 64) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// DefaultMaxRetainedWAL is the retained-WAL budget of a move: a stalled or
// forgotten move must never fill the source's disk and take every tenant
// down with it.
const DefaultMaxRetainedWAL = ByteSize(8 << 30)

// errOverBudget stops a move whose slot retained more WAL than allowed,
// after the slot is dropped. No retry brings the slot back.
type errOverBudget struct{ msg string }

func (e *errOverBudget) Error() string { return e.msg }

// Fatal marks the error as one no retry can fix.
func (e *errOverBudget) Fatal() bool { return true }

// budgetErr is the error of a move stopped by its retained-WAL budget, or
// err: whatever failed after the slot was dropped failed because of it.
func (j *Job) budgetErr(err error) error {
	if over := j.overBudget.Load(); over != nil && err != nil {
		return over
	}
	return err
}

// watchSlot reads, every interval until ctx ends, how much WAL the move's
// slot retains on the source, publishes it as a metric, and when it is
// above --max-retained-wal (or the server already invalidated the slot)
// drops the slot and returns an error that stops the move. A round that
// cannot reach the source is skipped: the stream notices that itself.
func (j *Job) watchSlot(ctx context.Context, every time.Duration) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
		if conn == nil || conn.IsClosed() {
			c, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-watch")
			if err != nil {
				continue
			}
			conn = c
		}
		var retained int64
		var status string
		err := conn.QueryRow(ctx, `SELECT coalesce(pg_current_wal_lsn() - restart_lsn, 0)::bigint, coalesce(wal_status, '')
		    FROM pg_replication_slots WHERE slot_name = $1`, j.names.Slot).Scan(&retained, &status)
		if errors.Is(err, pgx.ErrNoRows) || err != nil {
			continue
		}
		j.m.retained.Set(float64(retained))
		if retained <= int64(j.cfg.MaxRetainedWAL) && status != "lost" {
			if status == "unreserved" {
				j.log.Warn("the move's slot is about to lose WAL it needs (max_slot_wal_keep_size)", "slot", j.names.Slot, "retained_bytes", retained)
			}
			continue
		}
		// Recorded before the slot goes, so the stream's failure that
		// follows is reported as this, not as a lost slot.
		why := fmt.Sprintf("the move's slot %s retains %s of WAL on the source, above --max-retained-wal %s", j.names.Slot, formatBytes(retained), formatBytes(int64(j.cfg.MaxRetainedWAL)))
		if status == "lost" {
			why = fmt.Sprintf("the source invalidated the move's slot %s (max_slot_wal_keep_size)", j.names.Slot)
		}
		over := &errOverBudget{msg: fmt.Sprintf("%s: the slot is dropped so the source's disk is safe, and the move stopped; find why the target fell behind, then run `promoted cancel` and the move again (it copies anew)", why)}
		j.overBudget.Store(over)
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		derr := snapshot.Drop(dctx, conn, j.names)
		cancel()
		if derr != nil {
			over.msg = why + ", and dropping the slot failed (drop it by hand: SELECT pg_drop_replication_slot('" + j.names.Slot + "')): " + derr.Error()
		}
		j.log.Error("the move retained too much WAL: slot dropped", "slot", j.names.Slot, "retained_bytes", retained)
		return over
	}
}
