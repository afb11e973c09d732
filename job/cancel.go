package job

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/schema"
	"github.com/promoted/promoted/snapshot"
)

// EndConfig names a move to cancel or clean up.
type EndConfig struct {
	SourceDSN, TargetDSN, CatalogDSN string
	Tenant, TenantColumn, Schema     string
	TargetSchema                     string
	Tables                           []string
	// DropTarget makes cancel drop the target tables too.
	DropTarget bool
	// BatchRows and Pause pace cleanup's deletes.
	BatchRows int
	Pause     time.Duration
}

func (c *EndConfig) defaults() {
	if c.Schema == "" {
		c.Schema = "public"
	}
	if c.TargetSchema == "" {
		c.TargetSchema = c.Schema
	}
	if c.TenantColumn == "" {
		c.TenantColumn = "tenant_id"
	}
	if c.CatalogDSN == "" {
		c.CatalogDSN = c.SourceDSN
	}
	if c.BatchRows <= 0 {
		c.BatchRows = 5000
	}
}

// end opens the source, names the job and takes its lease, so cancel and
// cleanup never race a running move.
func end(ctx context.Context, c *EndConfig) (*pgx.Conn, string, *lease, error) {
	c.defaults()
	src, err := connect(ctx, c.SourceDSN, "source", "promoted")
	if err != nil {
		return nil, "", nil, err
	}
	var db string
	if err := src.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		src.Close(context.Background())
		return nil, "", nil, fmt.Errorf("identify source database: %w", err)
	}
	id := JobID(db, c.Schema, c.Tenant)
	l, err := acquireLease(ctx, c.SourceDSN, id, c.Tenant)
	if err != nil {
		src.Close(context.Background())
		return nil, "", nil, err
	}
	return src, id, l, nil
}

func flipped(ctx context.Context, c *EndConfig, id string) (bool, error) {
	conn, err := connect(ctx, c.CatalogDSN, "catalog", "promoted")
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	ok, _, err := (&cutover.Catalog{Conn: conn}).Flipped(ctx, id)
	return ok, err
}

// Cancel ends a move before its flip: the fence is disarmed and its
// triggers removed, the slot and publication dropped, so the source is
// authoritative and pins no WAL. The target is left for inspection unless
// DropTarget. A move that has flipped cannot be cancelled.
func Cancel(ctx context.Context, c EndConfig, log *slog.Logger) (string, error) {
	src, id, l, err := end(ctx, &c)
	if err != nil {
		return "", err
	}
	defer src.Close(context.Background())
	defer l.release()
	done, err := flipped(ctx, &c, id)
	if err != nil {
		return id, err
	}
	if done {
		return id, fmt.Errorf("tenant %s was already promoted (the catalog flipped), so the target is authoritative: run `promoted cleanup` instead", c.Tenant)
	}
	var literal string
	if err := src.QueryRow(ctx, `SELECT coalesce((SELECT tenant_id FROM promoted.fence WHERE job_id = $1), $2)`, id, c.Tenant).Scan(&literal); err != nil {
		literal = c.Tenant // no fence table: nothing armed
	}
	if err := cutover.Disarm(ctx, src, c.Schema, literal, id); err != nil {
		return id, err
	}
	if err := cutover.RemoveFence(ctx, src, c.Schema); err != nil {
		return id, err
	}
	if err := snapshot.Drop(ctx, src, snapshot.NamesFor(id)); err != nil {
		return id, err
	}
	if err := setJobPhase(ctx, src, id, PhaseCancelled, "cancelled", nil); err != nil {
		return id, err
	}
	if c.DropTarget {
		if c.TargetDSN == "" {
			return id, fmt.Errorf("--drop-target needs --target: pass the target's connection string")
		}
		if err := dropTarget(ctx, src, &c, id); err != nil {
			return id, err
		}
		log.Info("target tables dropped", "job", id)
	}
	return id, nil
}

func dropTarget(ctx context.Context, src *pgx.Conn, c *EndConfig, id string) error {
	dst, err := connect(ctx, c.TargetDSN, "target", "promoted")
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())
	plan, err := schema.Load(ctx, src, schema.Config{Schema: c.Schema, TargetSchema: c.TargetSchema, TenantColumn: c.TenantColumn,
		Tables: c.Tables, Tenant: promoted.Tenant(c.Tenant)})
	if err != nil {
		return err
	}
	for _, t := range plan.Tables {
		if _, err := dst.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()+" CASCADE"); err != nil {
			return fmt.Errorf("drop target %s.%s: %w", t.TargetSchema, t.TargetName, err)
		}
	}
	return apply.DeleteProgress(ctx, dst, id)
}

// Cleanup runs after a successful promotion: it deletes the tenant's old
// rows from the pooled tables in small batches, drops the slot and
// publication if still there, and disarms and removes the fence.
func Cleanup(ctx context.Context, c EndConfig, log *slog.Logger) (map[string]int64, error) {
	src, id, l, err := end(ctx, &c)
	if err != nil {
		return nil, err
	}
	defer src.Close(context.Background())
	defer l.release()
	done, err := flipped(ctx, &c, id)
	if err != nil {
		return nil, err
	}
	if !done {
		return nil, fmt.Errorf("tenant %s has not been promoted by promoted (no flip recorded for move %s), so its pooled rows are still authoritative: run `promoted promote` first, or `promoted cancel`", c.Tenant, id)
	}
	plan, err := schema.Load(ctx, src, schema.Config{Schema: c.Schema, TargetSchema: c.TargetSchema, TenantColumn: c.TenantColumn,
		Tables: c.Tables, Tenant: promoted.Tenant(c.Tenant)})
	if err != nil {
		return nil, err
	}
	if err := snapshot.Drop(ctx, src, snapshot.NamesFor(id)); err != nil {
		return nil, err
	}
	deleted, err := cutover.DeleteTenantRows(ctx, src, plan.Tables, c.BatchRows, c.Pause)
	if err != nil {
		return deleted, err
	}
	for t, n := range deleted {
		log.Info("deleted the tenant's old rows", "table", t, "rows", n)
	}
	if err := cutover.Disarm(ctx, src, c.Schema, tenantOf(plan.Tables, c.Tenant), id); err != nil {
		return deleted, err
	}
	if err := cutover.RemoveFence(ctx, src, c.Schema); err != nil {
		return deleted, err
	}
	return deleted, setJobPhase(ctx, src, id, PhaseCleaned, "cleaned", nil)
}
