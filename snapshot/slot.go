// Package snapshot takes the consistent starting point of a move: the
// publication, a logical slot that exports a snapshot, and the parallel
// COPY of the tenant's rows under that snapshot, streamed straight from the
// source into the target without holding a table in memory.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
)

// ConnectReplication opens a replication connection to the source. An
// idle-in-transaction timeout must not kill the exporter while the copy
// runs (docs/hazards.md 1.2), and lockTimeout bounds how long slot creation may
// wait for older transactions to end (1.4).
func ConnectReplication(ctx context.Context, dsn string, lockTimeout time.Duration) (*pgconn.PgConn, error) {
	return db.OpenReplication(ctx, dsn, map[string]string{
		"idle_in_transaction_session_timeout": "0",
		"statement_timeout":                   "0",
		"lock_timeout":                        fmt.Sprintf("%dms", lockTimeout.Milliseconds()),
	})
}

// Names are the source objects of one job, derived from the job id so a
// later `cancel` finds them without any other state.
type Names struct {
	Slot        string
	Publication string
}

// NamesFor returns the slot and publication names of a job.
func NamesFor(jobID string) Names {
	return Names{Slot: "promoted_" + jobID, Publication: "promoted_" + jobID}
}

// CreatePublication publishes the tables: with a row filter on the tenant
// where the table's replica identity covers the tenant column, unfiltered
// otherwise, because a filter on a column outside the replica identity
// makes every UPDATE and DELETE of the table fail for every tenant
// (docs/hazards.md 4.1). It must exist before the slot (1.6).
func CreatePublication(ctx context.Context, conn *pgx.Conn, name string, tables []*promoted.Table) error {
	var b strings.Builder
	b.WriteString("CREATE PUBLICATION ")
	b.WriteString(pgx.Identifier{name}.Sanitize())
	b.WriteString(" FOR TABLE ")
	for i, t := range tables {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(pgx.Identifier{t.Schema, t.Name}.Sanitize())
		if t.ServerFilter && !t.Whole() {
			b.WriteString(" WHERE (")
			b.WriteString(t.TenantPredicate())
			b.WriteString(")")
		}
	}
	if _, err := conn.Exec(ctx, b.String()); err != nil {
		return fmt.Errorf("create publication %s: %w", name, err)
	}
	return nil
}

// Slot is a created slot and its exported snapshot.
type Slot struct {
	Name            string
	ConsistentPoint promoted.LSN
	SnapshotName    string
}

// CreateSlot creates the permanent logical slot with an exported snapshot on
// the replication connection. The snapshot lives only while conn stays
// open and idle: send nothing on it until every copy worker has imported
// the snapshot.
func CreateSlot(ctx context.Context, conn *pgconn.PgConn, name string) (*Slot, error) {
	return createSlot(ctx, conn, name, "")
}

// CreateTemporarySlot creates a slot that vanishes with conn, for its
// exported snapshot only: a source snapshot at a known LSN, which live
// verification compares with the target paused at that LSN.
func CreateTemporarySlot(ctx context.Context, conn *pgconn.PgConn, name string) (*Slot, error) {
	return createSlot(ctx, conn, name, "TEMPORARY ")
}

func createSlot(ctx context.Context, conn *pgconn.PgConn, name, kind string) (*Slot, error) {
	res, err := pglogrepl.ParseCreateReplicationSlot(conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+name+" "+kind+"LOGICAL pgoutput (SNAPSHOT 'export')"))
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
			return nil, fmt.Errorf("create replication slot %s: waited too long for older transactions to end (see pg_stat_activity and pg_prepared_xacts on the source), retry when they are done: %w", name, err)
		}
		return nil, fmt.Errorf("create replication slot %s: %w", name, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return nil, fmt.Errorf("create replication slot %s: consistent point %q: %w", name, res.ConsistentPoint, err)
	}
	return &Slot{Name: name, ConsistentPoint: lsn, SnapshotName: res.SnapshotName}, nil
}

// SlotState is what pg_replication_slots says of a slot.
type SlotState struct {
	Exists         bool
	Active         bool
	ConfirmedFlush promoted.LSN
	WALStatus      string
}

// ReadSlot looks the slot up.
func ReadSlot(ctx context.Context, conn *pgx.Conn, name string) (SlotState, error) {
	var s SlotState
	var flush, status *string
	err := conn.QueryRow(ctx, `SELECT active, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1`, name).
		Scan(&s.Active, &flush, &status)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read slot %s: %w", name, err)
	}
	s.Exists = true
	if flush != nil {
		if s.ConfirmedFlush, err = pglogrepl.ParseLSN(*flush); err != nil {
			return s, err
		}
	}
	if status != nil {
		s.WALStatus = *status
	}
	return s, nil
}

// Drop removes the job's slot and publication from the source, ending a
// walsender that still holds the slot (an orphan of a killed daemon,
// docs/hazards.md 6.2). Missing objects are fine.
func Drop(ctx context.Context, conn *pgx.Conn, n Names) error {
	for attempt := 0; ; attempt++ {
		_, err := conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, n.Slot)
		if err != nil {
			return fmt.Errorf("drop slot %s: %w", n.Slot, err)
		}
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, n.Slot)
		if err == nil {
			break
		}
		var pgErr *pgconn.PgError
		// 55006: object in use, the terminated walsender has not exited yet.
		if !errors.As(err, &pgErr) || pgErr.Code != "55006" || attempt > 50 {
			return fmt.Errorf("drop slot %s: %w", n.Slot, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Empty the publication first and let the relcache invalidation settle:
	// a DROP PUBLICATION racing a writer that is rebuilding its table's
	// publication list fails that writer's statement with "cache lookup
	// failed for publication" (seen on 15.18), and that writer may be
	// another tenant's.
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables WHERE pubname = $1`, n.Publication)
	if err != nil {
		return fmt.Errorf("drop publication %s: %w", n.Publication, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("drop publication %s: %w", n.Publication, err)
	}
	if len(tables) > 0 {
		if _, err := conn.Exec(ctx, "ALTER PUBLICATION "+pgx.Identifier{n.Publication}.Sanitize()+" DROP TABLE "+strings.Join(tables, ", ")); err != nil {
			return fmt.Errorf("drop publication %s: %w", n.Publication, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{n.Publication}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %s: %w", n.Publication, err)
	}
	return nil
}
