package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
)

// EndConfig names a move to cancel or clean up. The move itself (its
// tables, tenant column and target schema) comes from its record on the
// source; those flags, when given, must agree with the record.
type EndConfig struct {
	SourceDSN, TargetDSN, CatalogDSN string
	Tenant, Schema                   string
	// TenantColumn, TargetSchema and Tables are checked against the
	// record; empty means "the move's".
	TenantColumn, TargetSchema string
	Tables                     []string
	// DropTarget makes cancel drop what the move created on the target
	// (and delete the tenant's rows from target tables it did not create).
	DropTarget bool
	// DropSourceTables makes cleanup of a demotion drop the dedicated
	// tables it moved out of (they stay, fenced, otherwise).
	DropSourceTables bool
	// BatchRows and Pause pace cleanup's deletes.
	BatchRows int
	Pause     time.Duration
}

// Validate checks the configuration before anything is touched.
func (c *EndConfig) Validate() error {
	switch {
	case c.SourceDSN == "":
		return usage(errors.New("--source is required: pass the source database's connection string"))
	case c.Tenant == "":
		return usage(errors.New("--tenant is required: pass the tenant of the move"))
	case c.DropTarget && c.TargetDSN == "":
		return usage(errors.New("--drop-target needs --target: pass the connection string of the database the move copied into"))
	case c.BatchRows < 0:
		return usage(fmt.Errorf("--batch-rows %d is negative: pass a number of rows such as 5000", c.BatchRows))
	case c.Pause < 0:
		return usage(fmt.Errorf("--batch-pause %s is negative: pass a duration, or 0", c.Pause))
	}
	if c.Schema == "" {
		c.Schema = "public"
	}
	if c.BatchRows == 0 {
		c.BatchRows = 5000
	}
	for side, dsn := range map[db.Side]string{db.Source: c.SourceDSN, db.Target: c.TargetDSN, db.Catalog: c.CatalogDSN} {
		if dsn == "" {
			continue
		}
		if side == db.Target && strings.HasPrefix(dsn, "kafka://") {
			// A Kafka replica's sink, naming which of the tenant's moves
			// to end; its topics are the consumers', never deleted here.
			if c.DropTarget {
				return usage(errors.New("--drop-target with a Kafka replica's --target: promoted never deletes topics; delete them with your Kafka tools"))
			}
			continue
		}
		if _, err := db.ParseDSN(side, dsn); err != nil {
			return usage(err)
		}
	}
	return nil
}

// catalogFor settles where the move's catalog is: --catalog, else the
// source for a promotion and the pooled target for a demotion (which
// needs --target then).
func (c *EndConfig) catalogFor(rec *state.Job, what string) error {
	if c.CatalogDSN != "" {
		return nil
	}
	if rec.Kind != state.KindDemote && rec.Kind != state.KindRollback {
		c.CatalogDSN = c.SourceDSN
		return nil
	}
	if c.TargetDSN == "" {
		return fmt.Errorf("the move of tenant %s is a demotion into %s, which holds its catalog (and its demoted rows): pass that database as --target to %s it (nothing was changed)", rec.Tenant, rec.Target, what)
	}
	c.CatalogDSN = c.TargetDSN
	return nil
}

// end opens the source, finds the move's record and takes its lease, so
// cancel and cleanup never race a running move.
func end(ctx context.Context, c *EndConfig) (*pgx.Conn, *state.Job, *lease, error) {
	if err := c.Validate(); err != nil {
		return nil, nil, nil, err
	}
	src, err := db.Open(ctx, db.Source, c.SourceDSN, "promoted")
	if err != nil {
		return nil, nil, nil, err
	}
	rec, err := findMove(ctx, src, c)
	if err == nil {
		var l *lease
		if l, err = acquireLease(ctx, c.SourceDSN, rec.ID, rec.Tenant); err == nil {
			return src, rec, l, nil
		}
	}
	src.Close(context.Background())
	return nil, nil, nil, err
}

// findMove returns the record of the move of c.Tenant out of c.Schema.
// The tenant is compared as the tenant column's type prints it, so
// --tenant 042 finds the move of tenant 42.
func findMove(ctx context.Context, src *pgx.Conn, c *EndConfig) (*state.Job, error) {
	jobs, err := state.Jobs(ctx, src)
	if err != nil {
		return nil, err
	}
	var (
		rec     *state.Job
		actives []*state.Job
	)
	for _, j := range jobs {
		if j.Schema != c.Schema {
			continue
		}
		tenant := c.Tenant
		if j.TenantType != "" {
			// The type is format_type's, read from the source's catalog.
			if err := src.QueryRow(ctx, "SELECT ($1::text)::"+j.TenantType+"::text", c.Tenant).Scan(&tenant); err != nil {
				continue // not a value of this move's tenant type
			}
		}
		// The active move of the tenant, else its latest ended one: a
		// tenant may have been replicated and cancelled before.
		if tenant != j.Tenant {
			continue
		}
		if j.Active() && (c.TargetDSN == "" || j.Target == db.Redact(c.TargetDSN) || j.Target == c.TargetDSN) {
			actives = append(actives, j)
		}
		if rec == nil || !rec.Active() && j.Active() {
			rec = j
		}
	}
	switch {
	case len(actives) == 1:
		rec = actives[0]
	case len(actives) > 1:
		// Several moves of the tenant under way (a promotion beside a
		// Kafka replica, say): never guess which one to end.
		names := make([]string, len(actives))
		for i, a := range actives {
			names[i] = a.Kind + " into " + a.Target
		}
		return nil, fmt.Errorf("tenant %s has %d moves under way out of schema %s (%s): pass --target with the target of the one to end", c.Tenant, len(actives), c.Schema, strings.Join(names, "; "))
	}
	if rec == nil {
		return nil, fmt.Errorf("no move of tenant %s out of schema %s is recorded on this source, so there is nothing to end: check --tenant and --schema (`promoted status --source ...` lists the moves)", c.Tenant, c.Schema)
	}
	mine := "leave the flag out, the move's own is used"
	if c.TenantColumn != "" && c.TenantColumn != rec.TenantColumn {
		return nil, fmt.Errorf("the move of tenant %s was made with --tenant-column %s, not %s: %s", rec.Tenant, rec.TenantColumn, c.TenantColumn, mine)
	}
	if len(c.Tables) > 0 && !slices.Equal(sorted(c.Tables), sorted(rec.Tables)) {
		return nil, fmt.Errorf("the move of tenant %s moved --tables %s, not %s: %s", rec.Tenant, strings.Join(rec.Tables, ","), strings.Join(c.Tables, ","), mine)
	}
	if c.TargetSchema != "" && c.TargetSchema != rec.TargetSchema {
		return nil, fmt.Errorf("the move of tenant %s copied into schema %s, not %s: %s", rec.Tenant, rec.TargetSchema, c.TargetSchema, mine)
	}
	return rec, nil
}

// recordTables are the move's tables as its record names them, enough to
// select the tenant's rows on either side without reading the source's
// definitions (which may have changed since).
func recordTables(rec *state.Job) []*promoted.Table {
	out := make([]*promoted.Table, len(rec.Tables))
	for i, name := range rec.Tables {
		out[i] = &promoted.Table{Schema: rec.Schema, Name: name, TargetSchema: rec.TargetSchema, TargetName: name,
			Columns: []promoted.Column{{Name: rec.TenantColumn}}, TenantLiteral: rec.Tenant}
	}
	return out
}

func flippedMove(ctx context.Context, c *EndConfig, id string) (bool, error) {
	ok, _, err := (&state.Catalog{DSN: c.CatalogDSN}).Flipped(ctx, id)
	return ok, err
}

// Cancel ends a move before its flip: the fence is disarmed and its
// triggers removed where no other move needs them, the slot and
// publication dropped, so the source is authoritative and pins no WAL.
// The target is left for inspection unless DropTarget, which drops what
// the move created there and nothing else. A move that has flipped cannot
// be cancelled. It returns the move's id.
func Cancel(ctx context.Context, c EndConfig, log *slog.Logger) (string, error) {
	src, rec, l, err := end(ctx, &c)
	if err != nil {
		return "", err
	}
	defer src.Close(context.Background())
	defer l.release()
	log = log.With("job", rec.ID)
	if err := c.catalogFor(rec, "cancel"); err != nil {
		return rec.ID, err
	}
	if rec.Kind == state.KindRollback {
		return rec.ID, cancelRollback(ctx, src, rec, &c)
	}
	if rec.Kind == state.KindDemote {
		// The demoted rows sit in tables other tenants use, where nobody
		// must find them once the demotion is given up: they always go.
		c.DropTarget = true
	}
	done, err := flippedMove(ctx, &c, rec.ID)
	if err != nil {
		return rec.ID, err
	}
	if done && rec.Kind == state.KindDemote {
		return rec.ID, fmt.Errorf("tenant %s was already demoted (the catalog flipped), so the pooled tables are authoritative and there is nothing to cancel: run `promoted cleanup --drop-source-tables` to drop the dedicated tables", rec.Tenant)
	}
	if done {
		return rec.ID, fmt.Errorf("tenant %s was already promoted (the catalog flipped), so the target is authoritative and there is nothing to cancel: run `promoted cleanup --source ... --tenant %s` to delete the old rows", rec.Tenant, c.Tenant)
	}
	var dst *pgx.Conn
	if c.DropTarget {
		// Checked before anything is changed: the target must be the one
		// the move copied into.
		if dst, err = db.Open(ctx, db.Target, c.TargetDSN, "promoted"); err != nil {
			return rec.ID, err
		}
		defer dst.Close(context.Background())
		prog, err := state.ReadProgress(ctx, dst, rec.ID)
		if err != nil {
			return rec.ID, err
		}
		created, err := state.CreatedObjects(ctx, dst, rec.ID)
		if err != nil {
			return rec.ID, err
		}
		if prog == nil && len(created) == 0 {
			return rec.ID, fmt.Errorf("%s holds no record of the move of tenant %s, which copies into %s: pass that database as --target (nothing was cancelled)", db.Redact(c.TargetDSN), rec.Tenant, rec.Target)
		}
	}
	if err := state.DisarmFence(ctx, src, rec.Schema, rec.Tenant, rec.ID); err != nil {
		return rec.ID, err
	}
	if err := cutover.RemoveFence(ctx, src, rec.Schema, rec.ID, rec.Tenant); err != nil {
		return rec.ID, err
	}
	if err := snapshot.Drop(ctx, src, snapshot.NamesFor(rec.ID)); err != nil {
		return rec.ID, err
	}
	// A cutover that failed without knowing whether it flipped kept its
	// rollback slot on the target.
	if err := dropRollbackSlot(ctx, src, rec, &c, log); err != nil {
		return rec.ID, err
	}
	if err := state.SetJobPhase(ctx, src, rec.ID, state.PhaseCancelled, "cancelled", nil); err != nil {
		return rec.ID, err
	}
	if dst != nil {
		if err := dropCreated(ctx, dst, rec.ID, recordTables(rec), log); err != nil {
			return rec.ID, err
		}
		if err := state.DeleteProgress(ctx, dst, rec.ID); err != nil {
			return rec.ID, err
		}
		log.Info("dropped what the move created on the target")
	}
	return rec.ID, nil
}

// Cleanup runs after a successful promotion: it drops the slot and
// publication if still there, deletes the tenant's old rows from the
// pooled tables the move copied (its record says which) in small
// batches, children first, and disarms and removes the fence.
func Cleanup(ctx context.Context, c EndConfig, log *slog.Logger) (map[string]int64, error) {
	src, rec, l, err := end(ctx, &c)
	if err != nil {
		return nil, err
	}
	defer src.Close(context.Background())
	defer l.release()
	log = log.With("job", rec.ID)
	if rec.Phase == state.PhaseCleaned {
		log.Info("the move was cleaned up already")
		return map[string]int64{}, nil
	}
	if rec.Phase == state.PhaseRolledBack {
		return nil, fmt.Errorf("the promotion of tenant %s was rolled back: its pooled rows are authoritative again, so there is nothing to clean up", rec.Tenant)
	}
	if err := c.catalogFor(rec, "clean up"); err != nil {
		return nil, err
	}
	done, err := flippedMove(ctx, &c, rec.ID)
	if err != nil {
		return nil, err
	}
	if rec.Kind == state.KindDemote {
		return nil, cleanupDemotion(ctx, src, rec, &c, done)
	}
	if !done {
		return nil, fmt.Errorf("tenant %s has not been promoted by promoted (no flip recorded for move %s), so its pooled rows are still authoritative: run `promoted promote` first, or `promoted cancel`", rec.Tenant, rec.ID)
	}
	plan, err := schema.Load(ctx, src, schema.Config{Schema: rec.Schema, TargetSchema: rec.TargetSchema, TenantColumn: rec.TenantColumn,
		Tables: rec.Tables, Tenant: promoted.Tenant(rec.Tenant)})
	if err != nil {
		return nil, fmt.Errorf("read the moved tables on the source: %w", err)
	}
	if len(plan.ReferencedBy) > 0 {
		return nil, fmt.Errorf("foreign key %s, whose table was not moved: deleting the old rows would break or delete its rows; move or delete those rows first, then rerun cleanup", plan.ReferencedBy[0])
	}
	if plan.Tenant() != rec.Tenant {
		return nil, fmt.Errorf("the source prints tenant %s as %s now, but the move recorded %s: check the tenant column's type", c.Tenant, plan.Tenant(), rec.Tenant)
	}
	if err := snapshot.Drop(ctx, src, snapshot.NamesFor(rec.ID)); err != nil {
		return nil, err
	}
	// The point of no return: the rollback slot goes first, then the rows
	// a rollback would have needed.
	if err := dropRollbackSlot(ctx, src, rec, &c, log); err != nil {
		return nil, err
	}
	deleted, err := cutover.DeleteTenantRows(ctx, src, plan.Tables,
		cutover.DeleteOptions{Batch: c.BatchRows, Pause: c.Pause, Bypass: true, Children: plan.Children}, log)
	if err != nil {
		return deleted, err
	}
	for t, n := range deleted {
		log.Info("deleted the tenant's old rows", "table", t, "rows", n)
	}
	if err := state.DisarmFence(ctx, src, rec.Schema, rec.Tenant, rec.ID); err != nil {
		return deleted, err
	}
	if err := state.SetJobPhase(ctx, src, rec.ID, state.PhaseCleaned, "cleaned", nil); err != nil {
		return deleted, err
	}
	return deleted, cutover.RemoveFence(ctx, src, rec.Schema, rec.ID, rec.Tenant)
}

// cleanupDemotion drops the dedicated tables a demotion moved out of,
// only when asked to: until then they stay, fenced, as the tenant's data
// as of the flip.
func cleanupDemotion(ctx context.Context, src *pgx.Conn, rec *state.Job, c *EndConfig, flipped bool) error {
	switch {
	case !flipped:
		return fmt.Errorf("tenant %s has not been demoted (no flip recorded for move %s), so its dedicated tables are still authoritative: run `promoted demote` first, or `promoted cancel`", rec.Tenant, rec.ID)
	case !c.DropSourceTables:
		return fmt.Errorf("tenant %s was demoted; its dedicated tables stay, fenced (every write fails with SQLSTATE %s), as its data at the flip: pass --drop-source-tables to drop them", rec.Tenant, state.FenceSQLState)
	}
	if err := snapshot.Drop(ctx, src, snapshot.NamesFor(rec.ID)); err != nil {
		return err
	}
	names := make([]string, len(rec.Tables))
	for i, t := range rec.Tables {
		names[i] = pgx.Identifier{rec.Schema, t}.Sanitize()
	}
	// One statement, RESTRICT: the tables' keys among themselves go with
	// them, and a table outside the move that still references one stops
	// the drop instead of losing its key.
	if _, err := src.Exec(ctx, "DROP TABLE IF EXISTS "+strings.Join(names, ", ")+" RESTRICT"); err != nil {
		return fmt.Errorf("drop the dedicated tables of tenant %s: %w", rec.Tenant, err)
	}
	if err := state.DisarmFence(ctx, src, rec.Schema, rec.Tenant, rec.ID); err != nil {
		return err
	}
	if err := state.SetJobPhase(ctx, src, rec.ID, state.PhaseCleaned, "cleaned", nil); err != nil {
		return err
	}
	return cutover.RemoveFence(ctx, src, rec.Schema, rec.ID, rec.Tenant)
}

// dropRollbackSlot drops the promotion's rollback slot and publication on
// its target (through --target, or the recorded location when the
// password comes from the environment) and forgets them.
func dropRollbackSlot(ctx context.Context, src *pgx.Conn, rec *state.Job, c *EndConfig, log *slog.Logger) error {
	if rec.ReverseLSN == "" {
		return nil
	}
	dsn := c.TargetDSN
	if dsn == "" {
		dsn = rec.Target
	}
	dst, err := db.Open(ctx, db.Target, dsn, "promoted")
	if err != nil {
		return fmt.Errorf("cleanup drops the rollback slot on %s first, and cannot reach it (pass --target with its connection string; nothing was deleted): %w", rec.Target, err)
	}
	defer dst.Close(context.Background())
	_, names, err := reverseNames(ctx, dst, rec.TargetSchema, rec.Tenant)
	if err != nil {
		return err
	}
	if err := snapshot.Drop(ctx, dst, names); err != nil {
		return err
	}
	log.Info("dropped the rollback slot: from here on the way back is `promoted demote`", "slot", names.Slot)
	return state.SetReverse(ctx, src, rec.ID, "")
}

// cancelRollback stops a rollback before its flip: the dedicated side's
// fence is disarmed and removed, so the tenant writes there again. The
// rollback slot and what the pooled rows received are kept: a later
// rollback resumes from there.
func cancelRollback(ctx context.Context, src *pgx.Conn, rec *state.Job, c *EndConfig) error {
	if done, err := flippedMove(ctx, c, rec.ID); err != nil || done {
		if done {
			return fmt.Errorf("tenant %s was already rolled back (the catalog flipped back to the pooled tables), so there is nothing to cancel", rec.Tenant)
		}
		return err
	}
	if c.DropTarget {
		return fmt.Errorf("a rollback writes into the pooled rows the promotion left, which --drop-target would delete: cancel it without --drop-target")
	}
	if err := state.DisarmFence(ctx, src, rec.Schema, rec.Tenant, rec.ID); err != nil {
		return err
	}
	if err := state.SetJobPhase(ctx, src, rec.ID, state.PhaseCancelled, "cancelled", nil); err != nil {
		return err
	}
	return cutover.RemoveFence(ctx, src, rec.Schema, rec.ID, rec.Tenant)
}
