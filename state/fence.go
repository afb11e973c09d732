package state

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// FenceSQLState is the SQLSTATE of a write rejected by the fence. An
// application that sees it re-resolves the tenant's location and retries.
const FenceSQLState = "PM001"

// FenceFunction returns the name and DDL of the fence's trigger function
// for tables whose tenant column is col. The trigger passes the table's
// primary-key columns as arguments.
//
// It runs with its owner's rights (SECURITY DEFINER, the mover) and a
// pinned search_path: the application roles that fire it can neither read
// promoted's tables nor shadow an operator it uses (docs/hazards.md 14.1).
// A write costs one index probe of promoted.fence (two when an UPDATE
// changes the tenant) and no dynamic SQL. It is VOLATILE, so in READ
// COMMITTED each statement sees a fence row added before it started;
// older snapshots are the barrier's business.
//
// A fence row is armed, or only tracking: then the keys of the tenant's
// rows written are recorded in promoted.changed, by the source itself and
// independently of the change stream, so the check under the fence can
// re-compare exactly the rows changed since the last check before it
// and still catch a change the stream lost. Each key is recorded with
// the fence row's epoch, which the job raises each time it has re-checked
// what was recorded before (NextEpoch), so the check under the fence only
// covers the last epoch.
//
// The only way past an armed fence is a row in promoted.fence_bypass with
// the writing transaction's own id, which only the mover can insert and
// which no other transaction can see (cleanup deleting the old rows). A
// session setting would do for any role: SET needs no privilege for a
// custom setting (docs/hazards.md 14.4).
func FenceFunction(col string) (name, ddl string) {
	h := sha256.Sum256([]byte(col))
	c := promoted.QuoteIdent(col)
	return fenceFunction("fence_"+hex.EncodeToString(h[:6]), "NEW."+c+"::text", "OLD."+c+"::text", "OLD."+c+" IS DISTINCT FROM NEW."+c)
}

// WholeFenceFunction is FenceFunction for tables without the tenant
// column, all of whose rows are tenant's (a dedicated table being
// demoted): every write to them is the tenant's.
func WholeFenceFunction(tenant string) (name, ddl string) {
	h := sha256.Sum256([]byte(tenant))
	v := promoted.QuoteLiteral(tenant) + "::text"
	return fenceFunction("fence_whole_"+hex.EncodeToString(h[:6]), v, v, "false")
}

// TableFenceFunction is the fence function of the table's triggers.
func TableFenceFunction(t *promoted.Table) (name, ddl string) {
	if t.Whole() {
		return WholeFenceFunction(t.TenantLiteral)
	}
	return FenceFunction(t.Columns[t.Tenant].Name)
}

// fenceFunction builds the trigger function that reads the tenant of a
// new row as newV and of an old one as oldV; moved is true when an UPDATE
// changed the tenant.
func fenceFunction(name, newV, oldV, moved string) (string, string) {
	key := func(row string) string {
		return `(SELECT jsonb_agg(to_jsonb(` + row + `) -> k.a ORDER BY k.o) FROM unnest(TG_ARGV) WITH ORDINALITY AS k(a, o))`
	}
	check := func(row, also string) string {
		return fmt.Sprintf(`SELECT fe.armed, fe.job_id, fe.epoch INTO f FROM promoted.fence fe
         WHERE fe.schema_name = TG_TABLE_SCHEMA AND fe.tenant_id = v AND (fe.tables IS NULL OR TG_TABLE_NAME = ANY (fe.tables));
        IF FOUND THEN
            IF NOT f.armed THEN
                INSERT INTO promoted.changed (job_id, table_name, key, epoch) VALUES (f.job_id, TG_TABLE_NAME, %[1]s, f.epoch) ON CONFLICT DO NOTHING;%[2]s
            ELSIF NOT EXISTS (SELECT 1 FROM promoted.fence_bypass b WHERE b.xid = pg_current_xact_id_if_assigned()) THEN
                RAISE EXCEPTION USING ERRCODE = '%[3]s',
                    MESSAGE = format('tenant %%s is moving to a new location: writes to %%I.%%I are fenced; re-resolve the tenant''s location and retry', v, TG_TABLE_SCHEMA, TG_TABLE_NAME);
            END IF;
        END IF;`, key(row), also, FenceSQLState)
	}
	oldToo := `
                IF TG_OP = 'UPDATE' THEN
                    INSERT INTO promoted.changed (job_id, table_name, key, epoch) VALUES (f.job_id, TG_TABLE_NAME, ` + key("OLD") + `, f.epoch) ON CONFLICT DO NOTHING;
                END IF;`
	body := fmt.Sprintf(`
DECLARE
    v text;
    f record;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM promoted.fence fe WHERE fe.armed AND fe.schema_name = TG_TABLE_SCHEMA AND (fe.tables IS NULL OR TG_TABLE_NAME = ANY (fe.tables))) THEN
            RAISE EXCEPTION USING ERRCODE = '%[1]s',
                MESSAGE = format('%%I.%%I cannot be truncated while a tenant of it is moving (promoted)', TG_TABLE_SCHEMA, TG_TABLE_NAME);
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        v := %[2]s;
        %[3]s
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND %[5]s) THEN
        v := %[6]s;
        %[4]s
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END`, FenceSQLState, newV, check("NEW", oldToo), check("OLD", ""), moved, oldV)
	ddl := `CREATE OR REPLACE FUNCTION promoted.` + name + `() RETURNS trigger LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS ` + promoted.DollarQuote(body)
	return name, ddl
}

// Fence is one armed fence row: the tenant's writes to the tables of
// schema are rejected.
type Fence struct {
	Schema, Tenant, JobID string
	Tables                []string
}

// ArmFence inserts the fence row and, in the same transaction, runs
// check (the cutover makes sure every fence trigger exists and is
// enabled), so a fence is never armed over tables it does not guard. It
// returns the time it was armed. It takes no table lock.
func ArmFence(ctx context.Context, conn *pgx.Conn, f Fence, check func(pgx.Tx) error) (time.Time, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("arm fence: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `INSERT INTO promoted.fence (schema_name, tenant_id, job_id, tables, armed) VALUES ($1, $2, $3, $4, true)
	    ON CONFLICT (schema_name, tenant_id) DO UPDATE SET job_id = EXCLUDED.job_id, tables = EXCLUDED.tables, armed = true,
	        armed_at = clock_timestamp()
	    WHERE promoted.fence.job_id = EXCLUDED.job_id`, f.Schema, f.Tenant, f.JobID, f.Tables); err != nil {
		return time.Time{}, fmt.Errorf("arm fence: %w", err)
	}
	var owner string
	var at time.Time
	if err := tx.QueryRow(ctx, `SELECT job_id, clock_timestamp() FROM promoted.fence WHERE schema_name = $1 AND tenant_id = $2`, f.Schema, f.Tenant).Scan(&owner, &at); err != nil {
		return time.Time{}, fmt.Errorf("arm fence: %w", err)
	}
	if owner != f.JobID {
		return time.Time{}, fmt.Errorf("tenant %s of schema %s is already fenced by move %s: finish or cancel that move first", f.Tenant, f.Schema, owner)
	}
	if check != nil {
		if err := check(tx); err != nil {
			return time.Time{}, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return time.Time{}, fmt.Errorf("arm fence: %w", err)
	}
	return at, nil
}

// Track starts recording the keys of the tenant's rows written on the
// source (promoted.changed), without fencing anything. It only covers
// transactions that start after it: wait out the older ones (the
// cutover's barrier) before relying on it.
func Track(ctx context.Context, q Querier, f Fence) error {
	if err := ClearChanged(ctx, q, f.JobID); err != nil {
		return err
	}
	tag, err := q.Exec(ctx, `INSERT INTO promoted.fence (schema_name, tenant_id, job_id, tables, armed) VALUES ($1, $2, $3, $4, false)
	    ON CONFLICT (schema_name, tenant_id) DO UPDATE SET tables = EXCLUDED.tables, armed = false, epoch = 0
	    WHERE promoted.fence.job_id = EXCLUDED.job_id`, f.Schema, f.Tenant, f.JobID, f.Tables)
	if err != nil {
		return fmt.Errorf("track the tenant's writes: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("tenant %s of schema %s is fenced by another move: finish or cancel that move first", f.Tenant, f.Schema)
	}
	return nil
}

// ChangedKeys returns the keys of the tenant's rows written since Track
// in epochs from since on, per table: each key is the primary-key columns'
// values as text.
func ChangedKeys(ctx context.Context, q Querier, jobID string, since int) (map[string][][]string, error) {
	return changedKeys(ctx, q, `SELECT DISTINCT table_name, array(SELECT jsonb_array_elements_text(key)) FROM promoted.changed WHERE job_id = $1 AND epoch >= $2`, jobID, since)
}

// ChangedKeysBefore returns the keys recorded in epochs before the given
// one: complete once every transaction older than the epoch's start has
// ended (the cutover's barrier).
func ChangedKeysBefore(ctx context.Context, q Querier, jobID string, epoch int) (map[string][][]string, error) {
	return changedKeys(ctx, q, `SELECT DISTINCT table_name, array(SELECT jsonb_array_elements_text(key)) FROM promoted.changed WHERE job_id = $1 AND epoch < $2`, jobID, epoch)
}

// ChangedCount is how many keys were recorded in epochs before the given
// one (a key written twice counts twice): an upper bound that costs no
// key read into the daemon.
func ChangedCount(ctx context.Context, q Querier, jobID string, epoch int) (int64, error) {
	var n int64
	if err := q.QueryRow(ctx, `SELECT count(*) FROM promoted.changed WHERE job_id = $1 AND epoch < $2`, jobID, epoch).Scan(&n); err != nil {
		return 0, fmt.Errorf("count the rows written since the verification: %w", err)
	}
	return n, nil
}

func changedKeys(ctx context.Context, q Querier, sql, jobID string, epoch int) (map[string][][]string, error) {
	rows, err := q.Query(ctx, sql, jobID, epoch)
	if err != nil {
		return nil, fmt.Errorf("read the rows written since the verification: %w", err)
	}
	out := map[string][][]string{}
	var table string
	var key []string
	_, err = pgx.ForEachRow(rows, []any{&table, &key}, func() error {
		out[table] = append(out[table], append([]string(nil), key...))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the rows written since the verification: %w", err)
	}
	return out, nil
}

// NextEpoch starts a new epoch of the job's tracking and returns it: the
// tenant's writes from then on are recorded under it, so what was recorded
// before can be re-checked and left out of the check under the fence.
// Writes of transactions older than the call may still record the old
// epoch: wait them out (the barrier) before reading ChangedKeysBefore.
func NextEpoch(ctx context.Context, q Querier, jobID string) (int, error) {
	var epoch int
	err := q.QueryRow(ctx, `UPDATE promoted.fence SET epoch = epoch + 1 WHERE job_id = $1 AND NOT armed RETURNING epoch`, jobID).Scan(&epoch)
	if err != nil {
		return 0, fmt.Errorf("start a new epoch of the tracking of the tenant's writes: %w", err)
	}
	return epoch, nil
}

// DeleteChangedBefore forgets the keys of epochs before epoch, once they
// have been re-checked.
func DeleteChangedBefore(ctx context.Context, q Querier, jobID string, epoch int) error {
	if _, err := q.Exec(ctx, `DELETE FROM promoted.changed WHERE job_id = $1 AND epoch < $2`, jobID, epoch); err != nil {
		return fmt.Errorf("forget the re-checked rows: %w", err)
	}
	return nil
}

// StopTracking removes the job's fence row if it only tracks (never an
// armed one), and the keys it recorded.
func StopTracking(ctx context.Context, q Querier, jobID string) error {
	if ok, err := exists(ctx, q, "fence"); err != nil || !ok {
		return err
	}
	if _, err := q.Exec(ctx, `DELETE FROM promoted.fence WHERE job_id = $1 AND NOT armed`, jobID); err != nil {
		return fmt.Errorf("stop tracking the tenant's writes: %w", err)
	}
	return ClearChanged(ctx, q, jobID)
}

// ClearChanged forgets the keys recorded for the job.
func ClearChanged(ctx context.Context, q Querier, jobID string) error {
	if ok, err := exists(ctx, q, "changed"); err != nil || !ok {
		return err
	}
	if _, err := q.Exec(ctx, `DELETE FROM promoted.changed WHERE job_id = $1`, jobID); err != nil {
		return fmt.Errorf("forget the rows written since the verification: %w", err)
	}
	return nil
}

// DisarmFence removes this job's fence row, armed or tracking, and the
// keys it recorded: the tenant can write to the source again.
func DisarmFence(ctx context.Context, q Querier, schema, tenant, jobID string) error {
	if ok, err := exists(ctx, q, "fence"); err != nil || !ok {
		return err
	}
	if _, err := q.Exec(ctx, `DELETE FROM promoted.fence WHERE schema_name = $1 AND tenant_id = $2 AND job_id = $3`, schema, tenant, jobID); err != nil {
		return fmt.Errorf("disarm fence: %w", err)
	}
	return ClearChanged(ctx, q, jobID)
}

// FenceArmed reports whether this job's fence is armed, and since when.
func FenceArmed(ctx context.Context, q Querier, jobID string) (bool, time.Time, error) {
	if ok, err := exists(ctx, q, "fence"); err != nil || !ok {
		return false, time.Time{}, err
	}
	var at time.Time
	err := q.QueryRow(ctx, `SELECT armed_at FROM promoted.fence WHERE job_id = $1 AND armed`, jobID).Scan(&at)
	if err == pgx.ErrNoRows {
		return false, time.Time{}, nil
	}
	if err != nil {
		return false, time.Time{}, fmt.Errorf("read fence: %w", err)
	}
	return true, at, nil
}

// Bypass lets the transaction tx pass every armed fence: it records the
// transaction's own id in promoted.fence_bypass, a row no other
// transaction can see and no application role can write. Call it first in
// the transaction, and Unbypass before committing.
func Bypass(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, BypassSQL); err != nil {
		return fmt.Errorf("pass the fence: %w", err)
	}
	return nil
}

// BypassSQL and UnbypassSQL open and close the current transaction's way
// past the fence (Bypass, Unbypass), for sessions that pipeline them.
const (
	BypassSQL   = `INSERT INTO promoted.fence_bypass VALUES (pg_current_xact_id())`
	UnbypassSQL = `DELETE FROM promoted.fence_bypass WHERE xid = pg_current_xact_id()`
)

// Unbypass removes the transaction's bypass row, so none is ever
// committed.
func Unbypass(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, UnbypassSQL); err != nil {
		return fmt.Errorf("pass the fence: %w", err)
	}
	return nil
}

// FenceLock serializes, per source schema, the decisions about the fence
// triggers: installing them for a move, and removing them when no move of
// the schema needs them any more. It is a session advisory lock on conn;
// the returned function releases it.
func FenceLock(ctx context.Context, conn *pgx.Conn, schema string) (func(), error) {
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('promoted.fence'), hashtext($1))`, schema); err != nil {
		return nil, fmt.Errorf("lock the fence triggers of schema %s: %w", schema, err)
	}
	return func() {
		conn.Exec(context.Background(), `SELECT pg_advisory_unlock(hashtext('promoted.fence'), hashtext($1))`, schema)
	}, nil
}

// AllTables in FencedTables means every table of the schema is needed.
const AllTables = "*"

// FencedTables are the tables of schema that some active move (one that
// has been neither cancelled nor cleaned up) other than except still
// needs fenced, each with the tenants those moves move. Call it under
// FenceLock.
func FencedTables(ctx context.Context, q Querier, schema, except string) (map[string]map[string]bool, error) {
	jobs, err := Jobs(ctx, q)
	if err != nil {
		return nil, err
	}
	need := map[string]map[string]bool{}
	add := func(table, tenant string) {
		if need[table] == nil {
			need[table] = map[string]bool{}
		}
		need[table][tenant] = true
	}
	for _, j := range jobs {
		if j.ID == except || j.Schema != schema || j.Kind != KindPromote || !j.Active() {
			continue
		}
		if len(j.Tables) == 0 {
			add(AllTables, j.Tenant) // recorded by an older promoted: assume every table
		}
		for _, t := range j.Tables {
			add(t, j.Tenant)
		}
	}
	return need, nil
}
