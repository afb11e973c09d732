package job

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted/state"
	"github.com/promoted/promoted/testenv"
)

// startedDedicated is the schema of a tenant that started in its own
// database: the SaaS tables without the tenant column, keyed by id, with
// ids far from the pooled ones (a demotion does not remap keys).
const startedDedicated = `
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE DOMAIN positive_int AS int CHECK (VALUE > 0);
CREATE TABLE customers (id bigserial PRIMARY KEY, email text NOT NULL, name text);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    status order_status NOT NULL DEFAULT 'new',
    total numeric(12,2), note text, meta jsonb, tags text[], ref uuid, blob bytea,
    created timestamptz NOT NULL DEFAULT now());
CREATE TABLE order_lines (
    order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
    line int NOT NULL, qty positive_int NOT NULL, price numeric,
    PRIMARY KEY (order_id, line));
CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, payload text, at timestamptz NOT NULL DEFAULT now());
ALTER SEQUENCE customers_id_seq RESTART 1000000;
ALTER SEQUENCE orders_id_seq RESTART 1000000;
ALTER SEQUENCE events_id_seq RESTART 1000000;
INSERT INTO customers (email, name) SELECT 'd' || g || '@example.com', 'Dedicated ' || g FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, status, total, note, meta, tags, ref, blob)
  SELECT c.id, (ARRAY['new','paid','shipped']::order_status[])[1 + g % 3], g * 1.25,
         CASE WHEN (c.id + g) % 50 = 0 THEN (SELECT string_agg(md5(c.id::text || g::text || i::text), '') FROM generate_series(1, 300) i) ELSE 'note ' || g END,
         jsonb_build_object('g', g), ARRAY['t' || g, NULL], gen_random_uuid(), decode(md5(g::text), 'hex')
  FROM customers c, generate_series(1, 3) g;
INSERT INTO order_lines SELECT o.id, l, l, 1.5 * l FROM orders o, generate_series(1, 3) l;
INSERT INTO events (kind, payload) SELECT 'seed', 'payload ' || g FROM generate_series(1, 300) g;
ANALYZE`

// dedicatedWriter writes on a dedicated database without the tenant
// column until the fence stops it: a customer with an order and its
// lines, an order's status changed, an event added and the oldest deleted. It returns the
// acknowledged customers' emails and how often it was fenced.
func dedicatedWriter(ctx context.Context, dsn string) (stop func() (acked []string, fenced int64, err error)) {
	done := make(chan struct{})
	var (
		emails  []string
		fenced  atomic.Int64
		lastErr error
	)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		conn, err := testenv.PinnedConn(ctx, dsn)
		if err != nil {
			lastErr = err
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			email := fmt.Sprintf("live-%d@example.com", i)
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				var c, o int64
				if err := tx.QueryRow(ctx, `INSERT INTO customers (email) VALUES ($1) RETURNING id`, email).Scan(&c); err != nil {
					return err
				}
				if err := tx.QueryRow(ctx, `INSERT INTO orders (customer_id, total, note) VALUES ($1, 9.5, repeat('x', 3000)) RETURNING id`, c).Scan(&o); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO order_lines VALUES ($1, 1, 2, 3.5), ($1, 2, 1, 1)`, o); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `UPDATE orders SET status = 'shipped' WHERE id = (SELECT min(id) FROM orders WHERE status <> 'shipped')`); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO events (kind, payload) VALUES ('live', $1)`, email); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `DELETE FROM events WHERE id = (SELECT min(id) FROM events)`)
				return err
			})
			var pgErr *pgconn.PgError
			switch {
			case err == nil:
				emails = append(emails, email)
			case errors.As(err, &pgErr) && pgErr.Code == state.FenceSQLState:
				fenced.Add(1)
				time.Sleep(20 * time.Millisecond)
			default:
				lastErr = err
				return
			}
		}
	}()
	return func() ([]string, int64, error) {
		close(done)
		<-finished
		return emails, fenced.Load(), lastErr
	}
}

// TestDemoteWithoutTenantColumn demotes a tenant that started dedicated:
// its tables have no tenant column, so every row is the tenant's and the
// pooled tenant column is filled from --tenant, in the copy and in every
// change of the catch-up. The tenant writes on its side until the fence,
// other tenants write in the pooled tables throughout; the rows are
// compared one by one, no other tenant's row is touched, the dedicated
// tables stay fenced, and the pooled sequences move past the tenant's
// ids.
func TestDemoteWithoutTenantColumn(t *testing.T) {
	ctx := context.Background()
	pooled := src.NewSaaS(t, 40, 2)
	dedicated := dst.NewTenantDB(t)
	mustExec(t, ctx, dedicated.Owner, startedDedicated+";"+testenv.AppGrants("public"))
	mustExec(t, ctx, pooled.Owner, auditSQL)
	demote := func() error {
		j, err := New(Config{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "6", Demote: true}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		j.Hooks.BeforeCutover = func(context.Context) { time.Sleep(time.Second) }
		return j.Run(ctx)
	}
	// The tenant's row in tenants, which the pooled tables' foreign keys
	// need, is checked through the filled-in tenant column.
	if err := demote(); err == nil || !strings.Contains(err.Error(), `(id)=(6), which the pooled database lacks`) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("demote before tenant 6 exists in the pooled tenants: %v, want one line naming the missing row", err)
	}
	// Another tenant holds the dedicated side's first event id in the
	// pooled events, keyed by id alone.
	mustExec(t, ctx, pooled.Admin, `INSERT INTO events (id, tenant_id, kind) VALUES (1000000, 3, 'clash')`)
	dry, err := New(Config{SourceDSN: dedicated.Mover, TargetDSN: pooled.Mover, Tenant: "6", Demote: true, DryRun: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	var refused *RefusedError
	if err := dry.Run(ctx); !errors.As(err, &refused) {
		t.Fatalf("dry run of the demotion: %v, want the missing tenants row listed", err)
	}
	plan := dry.Planned()
	if len(plan.Tables) != len(movedTables) || !strings.Contains(fmt.Sprint(plan.Refusals), "which the pooled database lacks") ||
		!strings.Contains(fmt.Sprint(plan.Refusals), "already holds (id)=(1000000) for another tenant") {
		t.Errorf("dry run planned %v and refused %v: want the four tables, the colliding event id and the missing tenants row", plan.Tables, plan.Refusals)
	}
	mustExec(t, ctx, pooled.Admin, `DELETE FROM events WHERE id = 1000000`)
	for _, tbl := range plan.Tables {
		if !strings.HasPrefix(tbl.Filter, "whole table") {
			t.Errorf("dry run: %s is %q, want moved whole", tbl.Name, tbl.Filter)
		}
	}
	mustExec(t, ctx, pooled.Owner, `INSERT INTO tenants VALUES (6, 'tenant 6')`)

	stopTenant := dedicatedWriter(ctx, dedicated.App)
	stopOthers, err := testenv.Load(ctx, pooled.App, []int{1, 3}, 1)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	runErr := demote()
	time.Sleep(200 * time.Millisecond) // the tenant's writer meets the fence
	acked, fenced, werr := stopTenant()
	others := stopOthers()
	if runErr != nil {
		t.Fatalf("demote: %v", runErr)
	}
	if werr != nil {
		t.Fatalf("the tenant's writer: %v", werr)
	}
	if len(acked) == 0 || fenced == 0 {
		t.Fatalf("the tenant's writer wrote %d times and was fenced %d times: the demotion was not under the tenant's load", len(acked), fenced)
	}
	for _, w := range others {
		if w.Errs.Load() > 0 || w.Acks.Load() == 0 {
			t.Errorf("tenant %d wrote %d times with %d errors (%v) during the demotion", w.Tenant, w.Acks.Load(), w.Errs.Load(), w.Last.Load())
		}
	}
	s := connectPinned(t, ctx, dedicated.Admin)
	defer s.Close(ctx)
	d := connectPinned(t, ctx, pooled.Admin)
	defer d.Close(ctx)
	for _, tbl := range movedTables {
		a := rowsOf(t, ctx, s, `SELECT to_jsonb(x)::text FROM `+tbl+` x ORDER BY 1`)
		b := rowsOf(t, ctx, d, `SELECT (to_jsonb(x) - 'tenant_id')::text FROM `+tbl+` x WHERE tenant_id = 6 ORDER BY 1`)
		if len(a) == 0 || fmt.Sprint(a) != fmt.Sprint(b) {
			diff := ""
			for i := range min(len(a), len(b)) {
				if a[i] != b[i] {
					diff = a[i] + "\n" + b[i]
					break
				}
			}
			t.Errorf("%s: %d dedicated rows, %d pooled rows of tenant 6; first difference:\n%s", tbl, len(a), len(b), diff)
		}
	}
	for _, email := range acked {
		if n := queryOne[int64](t, ctx, pooled.Admin, `SELECT count(*) FROM customers WHERE tenant_id = 6 AND email = $1`, email); n != 1 {
			t.Errorf("acknowledged customer %s of tenant 6 is in the pooled tables %d times", email, n)
		}
	}
	if bad := rowsOf(t, ctx, d, `SELECT format('%s %s->%s', tbl, old_tenant, new_tenant) FROM audit
	     WHERE who = $1 AND (coalesce(old_tenant, 6) <> 6 OR coalesce(new_tenant, 6) <> 6) LIMIT 5`, testenv.Mover); len(bad) > 0 {
		t.Errorf("promoted's sessions changed other tenants' rows: %v", bad)
	}
	if n := queryOne[int64](t, ctx, pooled.Admin, `SELECT count(*) FROM audit WHERE who = $1 AND tbl = 'order_lines' AND new_tenant = 6`, testenv.Mover); n == 0 {
		t.Errorf("the audit saw no row of tenant 6 written by promoted")
	}
	if loc := queryOne[string](t, ctx, pooled.Admin, `SELECT location FROM promoted.tenant_catalog WHERE tenant_id = '6'`); loc != Redact(pooled.Mover) {
		t.Errorf("the catalog sends tenant 6 to %s, want the pooled database %s", loc, Redact(pooled.Mover))
	}
	app := connectPinned(t, ctx, dedicated.App)
	defer app.Close(ctx)
	_, err = app.Exec(ctx, `INSERT INTO events (kind) VALUES ('stale')`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != state.FenceSQLState {
		t.Errorf("a write to the dedicated side after the demotion: %v, want SQLSTATE %s", err, state.FenceSQLState)
	}
	pc := connectPinned(t, ctx, pooled.App)
	defer pc.Close(ctx)
	for _, tenant := range []int{6, 3} {
		if _, err := pc.Exec(ctx, `INSERT INTO events (tenant_id, kind) VALUES ($1, 'after')`, tenant); err != nil {
			t.Fatalf("insert with a default id into the pooled events after the demotion: %v", err)
		}
	}
}
