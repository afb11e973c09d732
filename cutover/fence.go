// Package cutover ends a promotion: it fences the tenant's writes on the
// source, drains the stream through a WAL marker written after the fence,
// verifies, syncs sequences and flips the tenant's catalog entry in one
// transaction, or, when anything fails or takes too long, disarms the fence
// and leaves the source authoritative.
package cutover

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/state"
)

// FenceSQLState is the SQLSTATE of a write rejected by the fence.
const FenceSQLState = state.FenceSQLState

// TriggerName was the one fence trigger of a moved table, shared by every
// tenant's move and fired by every tenant's write (promoted before
// per-tenant triggers): RemoveFence still drops it. TruncateTriggerName is
// the statement-level trigger that the moves of a table share.
const (
	TriggerName         = "promoted_fence"
	TruncateTriggerName = "promoted_fence_truncate"
)

// TenantTriggers names a tenant's row triggers on a moved table, for
// INSERT, UPDATE and DELETE. Each fires only for the tenant's rows (its
// WHEN clause, which the server evaluates without calling the function),
// so other tenants' writes never run the fence function: one PL/pgSQL
// call and one probe of promoted.fence per row cut a table's insert rate
// five- to six-fold (328k rows/s bare, 59k with a trigger for every row,
// 363k with the tenant's triggers and another tenant's rows).
func TenantTriggers(tenant string) []string {
	h := sha256.Sum256([]byte(tenant))
	base := "promoted_fence_" + hex.EncodeToString(h[:6])
	return []string{base + "_i", base + "_u", base + "_d"}
}

// tenantTriggerDDL creates the tenant's row triggers and the shared
// truncate trigger on t, enabled ALWAYS, replacing earlier ones. A table
// without the tenant column (moved whole) is the tenant's alone: its
// triggers fire for every row.
func tenantTriggerDDL(t *promoted.Table, fn string) string {
	name := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	args := make([]string, len(t.PrimaryKey))
	for i, k := range t.PrimaryKey {
		args[i] = promoted.QuoteLiteral(t.Columns[k].Name)
	}
	call := "EXECUTE FUNCTION promoted." + fn + "(" + strings.Join(args, ", ") + ")"
	when := [3]string{}
	if !t.Whole() {
		c, v := promoted.QuoteIdent(t.Columns[t.Tenant].Name), t.TenantValue()
		when = [3]string{
			" WHEN (NEW." + c + " = " + v + ")",
			" WHEN (OLD." + c + " = " + v + " OR NEW." + c + " = " + v + ")",
			" WHEN (OLD." + c + " = " + v + ")",
		}
	}
	var b strings.Builder
	for i, ev := range []string{"INSERT", "UPDATE", "DELETE"} {
		trg := pgx.Identifier{TenantTriggers(t.TenantLiteral)[i]}.Sanitize()
		fmt.Fprintf(&b, "DROP TRIGGER IF EXISTS %[1]s ON %[2]s;\nCREATE TRIGGER %[1]s BEFORE %[3]s ON %[2]s FOR EACH ROW%[4]s %[5]s;\nALTER TABLE %[2]s ENABLE ALWAYS TRIGGER %[1]s;\n",
			trg, name, ev, when[i], call)
	}
	fmt.Fprintf(&b, "DROP TRIGGER IF EXISTS %[1]s ON %[2]s;\nCREATE TRIGGER %[1]s BEFORE TRUNCATE ON %[2]s FOR EACH STATEMENT %[3]s;\nALTER TABLE %[2]s ENABLE ALWAYS TRIGGER %[1]s",
		TruncateTriggerName, name, call)
	return b.String()
}

// InstallFence creates, on each moved source table, the fence triggers,
// enabled ALWAYS so sessions with session_replication_role = replica are
// fenced too. It holds the schema's fence lock, so a cancel or cleanup of
// another move cannot remove a trigger this move needs in between; record
// the move (state.RecordJob) first. Each table is altered in its own short
// transaction under lock_timeout, retried on SQLSTATE 55P03, so the trigger
// DDL never queues every writer of a pooled table behind a long
// transaction. It is idempotent and runs at prepare, never at cutover.
func InstallFence(ctx context.Context, src *pgx.Conn, schema string, tables []*promoted.Table) error {
	if err := state.EnsureSource(ctx, src); err != nil {
		return err
	}
	unlock, err := state.FenceLock(ctx, src, schema)
	if err != nil {
		return err
	}
	defer unlock()
	for _, t := range tables {
		fn, ddl := state.TableFenceFunction(t)
		if _, err := src.Exec(ctx, ddl); err != nil {
			return fmt.Errorf("install fence function for %s: %w", t, err)
		}
		ok, err := triggersInPlace(ctx, src, t, fn)
		if err != nil {
			return fmt.Errorf("install fence on %s: %w", t, err)
		}
		if ok {
			continue
		}
		stmt := tenantTriggerDDL(t, fn)
		if err := ExecLockRetry(ctx, src, stmt); err != nil {
			return fmt.Errorf("install fence on %s: %w", t, err)
		}
	}
	return nil
}

// triggersInPlace reports whether the tenant's three row triggers and
// the truncate trigger of t exist, call fn with the table's primary-key
// columns, and are enabled ALWAYS.
func triggersInPlace(ctx context.Context, q state.Querier, t *promoted.Table, fn string) (bool, error) {
	sql, args, want := triggerCount(t, fn, 0, 0)
	var i, n int
	err := q.QueryRow(ctx, sql, args...).Scan(&i, &n)
	return n == want, err
}

// triggerCount is a query of one row (tag, how many of t's fence triggers
// are in place and enabled ALWAYS), its parameters numbered after the
// first `after`, and how many there must be.
func triggerCount(t *promoted.Table, fn string, tag, after int) (string, []any, int) {
	var args []byte
	for _, k := range t.PrimaryKey {
		args = append(append(args, t.Columns[k].Name...), 0)
	}
	names := append(TenantTriggers(t.TenantLiteral), TruncateTriggerName)
	return fmt.Sprintf(`SELECT %d, count(*)::int FROM pg_trigger g
	    WHERE g.tgrelid = $%d::regclass AND g.tgname = ANY ($%d) AND g.tgenabled = 'A'
	      AND g.tgfoid = ('promoted.' || $%d || '()')::regprocedure AND g.tgargs = $%d`, tag, after+1, after+2, after+3, after+4),
		[]any{pgx.Identifier{t.Schema, t.Name}.Sanitize(), names, fn, args}, len(names)
}

// checkTriggers fails unless every table's fence triggers are in place. It
// runs under the fence, just before the flip, so it asks about every table
// in one query: one round trip, not one per table.
func checkTriggers(ctx context.Context, q state.Querier, tables []*promoted.Table) error {
	if len(tables) == 0 {
		return nil
	}
	var (
		parts []string
		args  []any
		want  []int
	)
	for i, t := range tables {
		fn, _ := state.TableFenceFunction(t)
		sql, a, n := triggerCount(t, fn, i, len(args))
		parts, args, want = append(parts, sql), append(args, a...), append(want, n)
	}
	rows, err := q.Query(ctx, strings.Join(parts, " UNION ALL "), args...)
	if err != nil {
		return fmt.Errorf("check the fence triggers: %w", err)
	}
	got := make([]int, len(tables))
	var i, n int
	if _, err := pgx.ForEachRow(rows, []any{&i, &n}, func() error { got[i] = n; return nil }); err != nil {
		return fmt.Errorf("check the fence triggers: %w", err)
	}
	for i, t := range tables {
		if got[i] != want[i] {
			return fmt.Errorf("the fence triggers of tenant %s on %s are missing or not enabled ALWAYS, so the fence would not hold: rerun promote, which reinstalls them", t.TenantLiteral, t)
		}
	}
	return nil
}

// RemoveFence drops, from every table of schema, the fence triggers that
// no active move other than jobID still needs: tenant's row triggers where
// no other move of that tenant needs the table, and the shared truncate
// trigger (and an older promoted's shared row trigger) where no move at
// all does. It decides under the schema's fence lock, so one tenant's
// cancel or cleanup never unfences another tenant in flight
// (docs/hazards.md 14.5).
func RemoveFence(ctx context.Context, src *pgx.Conn, schema, jobID, tenant string) error {
	if ok, err := hasFenceTable(ctx, src); err != nil || !ok {
		return err
	}
	unlock, err := state.FenceLock(ctx, src, schema)
	if err != nil {
		return err
	}
	defer unlock()
	need, err := state.FencedTables(ctx, src, schema, jobID)
	if err != nil {
		return err
	}
	if need[state.AllTables] != nil {
		return nil
	}
	mine := TenantTriggers(tenant)
	shared := []string{TriggerName, TruncateTriggerName}
	rows, err := src.Query(ctx, `SELECT c.relname::text, g.tgname::text FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
	    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND (g.tgname = ANY ($2) OR g.tgname = ANY ($3))
	   ORDER BY 1, 2`, schema, mine, shared)
	if err != nil {
		return fmt.Errorf("remove fence: %w", err)
	}
	drop := map[string][]string{} // by table, in table order
	var order []string
	var table, trigger string
	if _, err := pgx.ForEachRow(rows, []any{&table, &trigger}, func() error {
		if slices.Contains(shared, trigger) && len(need[table]) > 0 || slices.Contains(mine, trigger) && need[table][tenant] {
			return nil
		}
		if drop[table] == nil {
			order = append(order, table)
		}
		name := pgx.Identifier{schema, table}.Sanitize()
		drop[table] = append(drop[table], "DROP TRIGGER IF EXISTS "+pgx.Identifier{trigger}.Sanitize()+" ON "+name)
		return nil
	}); err != nil {
		return fmt.Errorf("remove fence: %w", err)
	}
	for _, t := range order {
		if err := ExecLockRetry(ctx, src, strings.Join(drop[t], "; ")); err != nil {
			return fmt.Errorf("remove fence from %s: %w", pgx.Identifier{schema, t}.Sanitize(), err)
		}
	}
	return nil
}

func hasFenceTable(ctx context.Context, q state.Querier) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT to_regclass('promoted.fence') IS NOT NULL`).Scan(&ok)
	return ok, err
}

// ExecLockRetry runs DDL in one transaction under a short lock_timeout,
// retrying when the lock is not granted in time (SQLSTATE 55P03), so a
// waiting ALTER never queues every writer of a pooled table behind a long
// transaction.
func ExecLockRetry(ctx context.Context, conn *pgx.Conn, stmt string) error {
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		_, err = conn.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '100ms'; "+stmt+"; COMMIT")
		if err == nil {
			return nil
		}
		conn.Exec(context.Background(), "ROLLBACK")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(50+attempt*20) * time.Millisecond):
		}
	}
	return fmt.Errorf("lock not granted after 50 tries (a long transaction holds the table): %w", err)
}

// Arm inserts the tenant's fence row, checking in the same transaction
// that every moved table's fence triggers are in place, and returns the
// time it was armed. Arming takes no table lock.
func Arm(ctx context.Context, src *pgx.Conn, mv Move) (time.Time, error) {
	names := make([]string, len(mv.Tables))
	for i, t := range mv.Tables {
		names[i] = t.Name
	}
	return state.ArmFence(ctx, src, state.Fence{Schema: mv.Schema, Tenant: mv.Tenant, JobID: mv.JobID, Tables: names},
		func(tx pgx.Tx) error { return checkTriggers(ctx, tx, mv.Tables) })
}

// Barrier waits until every transaction of the source database that was
// running when it is called (right after the fence was armed) has ended,
// and then every prepared transaction: a REPEATABLE READ transaction whose
// snapshot predates the fence row cannot see it and could otherwise still
// write, and so could a transaction begun before the fence and prepared
// after it (docs/hazards.md 9.1).
//
// It sees other roles' transactions without any special privilege: each
// running transaction holds a lock on its own virtual transaction id,
// which pg_locks shows to every role (pg_stat_activity's xact_start is
// NULL for them, docs/hazards.md 14.2). A virtual transaction id is never reused
// for the next transaction of the session, so "gone from pg_locks" means
// "ended".
func Barrier(ctx context.Context, src *pgx.Conn) error {
	var vxids []string
	err := src.QueryRow(ctx, `SELECT coalesce(array_agg(l.virtualxid), '{}') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
	    WHERE l.locktype = 'virtualxid' AND l.granted AND l.pid <> pg_backend_pid() AND a.datname = current_database()`).Scan(&vxids)
	if err != nil {
		return fmt.Errorf("list the transactions older than the fence: %w", err)
	}
	for len(vxids) > 0 {
		var open []string
		if err := src.QueryRow(ctx, `SELECT coalesce(array_agg(l.pid || ' (' || coalesce(a.usename, '?') || ', ' || coalesce(a.application_name, '') || ')'), '{}')
		    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		    WHERE l.locktype = 'virtualxid' AND l.virtualxid = ANY ($1)`, vxids).Scan(&open); err != nil {
			return fmt.Errorf("wait for transactions older than the fence: %w", err)
		}
		if len(open) == 0 {
			break
		}
		if err := pause(ctx, "transactions older than the fence are still open (pids "+strings.Join(open, ", ")+")"); err != nil {
			return err
		}
	}
	// A transaction begun before the fence may have been prepared since:
	// it no longer holds its virtual transaction id, and COMMIT PREPARED
	// would write past the fence. Wait for every prepared transaction of
	// the database that exists now.
	var gids []string
	if err := src.QueryRow(ctx, `SELECT coalesce(array_agg(gid), '{}') FROM pg_prepared_xacts WHERE database = current_database()`).Scan(&gids); err != nil {
		return fmt.Errorf("list prepared transactions: %w", err)
	}
	for len(gids) > 0 {
		var open []string
		if err := src.QueryRow(ctx, `SELECT coalesce(array_agg(gid), '{}') FROM pg_prepared_xacts WHERE database = current_database() AND gid = ANY ($1)`, gids).Scan(&open); err != nil {
			return fmt.Errorf("wait for prepared transactions: %w", err)
		}
		if len(open) == 0 {
			break
		}
		if err := pause(ctx, "prepared transactions older than the fence are still open ("+strings.Join(open, ", ")+"): COMMIT PREPARED or ROLLBACK PREPARED them"); err != nil {
			return err
		}
	}
	return nil
}

func pause(ctx context.Context, what string) error {
	select {
	case <-ctx.Done():
		return fmt.Errorf("%s: end them or raise --cutover-timeout: %w", what, ctx.Err())
	case <-time.After(2 * time.Millisecond):
		return nil
	}
}

// EmitMarker writes the transactional WAL marker that the stream must
// deliver before the target is known to hold every write made before the
// fence (DESIGN.md, write fence).
func EmitMarker(ctx context.Context, src *pgx.Conn, content string) (promoted.LSN, error) {
	var s string
	if err := src.QueryRow(ctx, `SELECT pg_logical_emit_message(true, 'promoted', $1)::text`, content).Scan(&s); err != nil {
		return 0, fmt.Errorf("write fence marker: %w", err)
	}
	return promoted.ParseLSN(s)
}
