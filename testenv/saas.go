package testenv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SaaSSchema is a small SaaS schema: tables keyed (tenant_id, id) that
// the server filters, a table keyed by id alone that the daemon filters, a
// tenants table that is not moved, user types, and a three-level
// foreign-key chain.
const SaaSSchema = `
CREATE TABLE tenants (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE DOMAIN positive_int AS int CHECK (VALUE > 0);
CREATE TABLE customers (
    tenant_id bigint NOT NULL REFERENCES tenants,
    id bigserial,
    email text NOT NULL,
    name text,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE orders (
    tenant_id bigint NOT NULL REFERENCES tenants,
    id bigserial,
    customer_id bigint NOT NULL,
    status order_status NOT NULL DEFAULT 'new',
    total numeric(12,2),
    note text,
    meta jsonb,
    tags text[],
    ref uuid,
    blob bytea,
    created timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers
);
CREATE INDEX orders_status_idx ON orders (tenant_id, status);
CREATE TABLE order_lines (
    tenant_id bigint NOT NULL,
    order_id bigint NOT NULL,
    line int NOT NULL,
    qty positive_int NOT NULL,
    price numeric,
    PRIMARY KEY (tenant_id, order_id, line),
    FOREIGN KEY (tenant_id, order_id) REFERENCES orders ON DELETE CASCADE
);
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    tenant_id bigint NOT NULL,
    kind text NOT NULL,
    payload text,
    at timestamptz NOT NULL DEFAULT now()
);
`

// MovedTables are the SaaS tables that carry the tenant column.
var MovedTables = []string{"customers", "orders", "order_lines", "events"}

// SeedSaaS creates the SaaS schema in the database and fills tenants 1..5:
// scale customers per tenant, three orders per customer with three lines
// each, and scale events per tenant; tenant 1 gets bigFactor times more.
// Every 50th order carries an incompressible 9.6 kB note, stored out of
// line (TOAST).
func SeedSaaS(ctx context.Context, dsn string, scale, bigFactor int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, SaaSSchema); err != nil {
		return fmt.Errorf("create SaaS schema: %w", err)
	}
	for _, q := range []string{
		`INSERT INTO tenants SELECT g, 'tenant ' || g FROM generate_series(1, 5) g`,
		`INSERT INTO customers (tenant_id, email, name)
  SELECT t, 'c' || t || '-' || g || '@example.com', CASE WHEN g % 7 = 0 THEN NULL ELSE 'Customer ' || g END
  FROM generate_series(1, 5) t, generate_series(1, CASE WHEN t = 1 THEN $1::int * $2::int ELSE $1::int END) g`,
		`INSERT INTO orders (tenant_id, customer_id, status, total, note, meta, tags, ref, blob)
  SELECT c.tenant_id, c.id, (ARRAY['new','paid','shipped']::order_status[])[1 + g % 3], (g * c.id % 100000) / 7.0,
         CASE WHEN (c.id + g) % 50 = 0 THEN (SELECT string_agg(md5(c.id::text || g::text || i::text), '') FROM generate_series(1, 300) i) ELSE 'note ' || g END,
         jsonb_build_object('g', g, 'nested', jsonb_build_object('x', g % 3)),
         ARRAY['t' || (g % 4), 'quote''s', NULL], gen_random_uuid(), decode(md5(g::text), 'hex')
  FROM customers c, generate_series(1, 3) g`,
		`INSERT INTO order_lines (tenant_id, order_id, line, qty, price)
  SELECT o.tenant_id, o.id, l, 1 + l, 9.99 * l FROM orders o, generate_series(1, 3) l`,
		`INSERT INTO events (tenant_id, kind, payload)
  SELECT t, 'seed', 'payload ' || g
  FROM generate_series(1, 5) t, generate_series(1, CASE WHEN t = 1 THEN $1::int * $2::int ELSE $1::int END) g`,
		`ANALYZE`,
	} {
		var args []any
		if strings.Contains(q, "$1") {
			args = []any{scale, bigFactor}
		}
		if _, err := conn.Exec(ctx, q, args...); err != nil {
			return fmt.Errorf("seed SaaS data: %w", err)
		}
	}
	return nil
}

// Writer runs random work on one tenant until stopped: orders with lines,
// updates that leave TOASTed notes unchanged, deletes that cascade, events
// that move between tenants. It counts acknowledged writes and errors.
type Writer struct {
	Tenant int
	ID     int
	Acks   atomic.Int64
	Errs   atomic.Int64
	Last   atomic.Value
	// Router, when set, routes the writer by the catalog: a fenced write
	// (PM001) makes it re-resolve the tenant's location, as an
	// application following the catalog contract would.
	Router *Router
	Fenced atomic.Int64
	// FirstFenced and LastFenced are when the writer first and last saw
	// PM001.
	FirstFenced, LastFenced atomic.Value
	// Moved is set once the writer writes at a location other than its
	// first.
	Moved atomic.Bool
	// Slowest is the longest any one of its writes took, in nanoseconds.
	Slowest atomic.Int64

	mu     sync.Mutex
	ledger []string
	seq    int
	// load numbers the Load call that made the writer: a ledger email is
	// unique across loads, so an insert that committed as its writer was
	// stopped (never acknowledged) cannot pass for a later load's write.
	load int64
}

// loads counts Load calls, for unique ledger emails.
var loads atomic.Int64

// Ledger returns the emails of the customers this writer inserted and saw
// acknowledged: each must be found wherever the tenant ends up.
func (w *Writer) Ledger() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.ledger...)
}

// Run writes until ctx ends.
func (w *Writer) Run(ctx context.Context, pool *pgxpool.Pool, seed uint64) {
	r := rand.New(rand.NewPCG(seed, uint64(w.Tenant)))
	version := int64(-1)
	if w.Router != nil {
		var err error
		if pool, version, err = w.Router.Resolve(ctx, w.Tenant); err != nil {
			w.Errs.Add(1)
			w.Last.Store(err.Error())
			return
		}
	}
	for ctx.Err() == nil {
		began := time.Now()
		err := w.step(ctx, pool, r)
		if d := int64(time.Since(began)); d > w.Slowest.Load() && ctx.Err() == nil {
			w.Slowest.Store(d)
		}
		var pgErr *pgconn.PgError
		switch {
		case err != nil && w.Router != nil && errors.As(err, &pgErr) && pgErr.Code == "PM001":
			if w.Fenced.Add(1) == 1 {
				w.FirstFenced.Store(time.Now())
			}
			w.LastFenced.Store(time.Now())
			p, v, rerr := w.Router.Resolve(ctx, w.Tenant)
			if rerr == nil && v != version {
				pool, version = p, v
				w.Moved.Store(true)
			} else {
				time.Sleep(2 * time.Millisecond)
			}
		case err != nil && ctx.Err() == nil:
			w.Errs.Add(1)
			w.Last.Store(err.Error())
		case err == nil:
			w.Acks.Add(1)
		}
	}
}

func (w *Writer) step(ctx context.Context, pool *pgxpool.Pool, r *rand.Rand) error {
	tn := w.Tenant
	switch r.IntN(11) {
	case 10: // a customer whose acknowledgement the test checks at the end
		w.mu.Lock()
		w.seq++
		email := fmt.Sprintf("ledger-%d-%d-%d-%d@example.com", tn, w.load, w.ID, w.seq)
		w.mu.Unlock()
		if _, err := pool.Exec(ctx, `INSERT INTO customers (tenant_id, email) VALUES ($1, $2)`, tn, email); err != nil {
			return err
		}
		w.mu.Lock()
		w.ledger = append(w.ledger, email)
		w.mu.Unlock()
		return nil
	case 0, 1: // a new order with lines, in one transaction
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		var oid int64
		err = tx.QueryRow(ctx, `INSERT INTO orders (tenant_id, customer_id, total, note, meta, tags)
		    SELECT tenant_id, id, $2, 'live', '{"live": true}', ARRAY['a','b'] FROM customers WHERE tenant_id = $1 ORDER BY random() LIMIT 1
		    RETURNING id`, tn, r.IntN(10000)).Scan(&oid)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO order_lines (tenant_id, order_id, line, qty, price)
		    SELECT $1, $2, l, l, 1.5 * l FROM generate_series(1, 3) l`, tn, oid); err != nil {
			return err
		}
		return tx.Commit(ctx)
	case 2: // update a small column of a row that may hold a TOASTed note
		_, err := pool.Exec(ctx, `UPDATE orders SET status = 'paid', total = total + 1
		    WHERE tenant_id = $1 AND id = (SELECT id FROM orders WHERE tenant_id = $1 ORDER BY random() LIMIT 1)`, tn)
		return err
	case 3:
		_, err := pool.Exec(ctx, `DELETE FROM orders WHERE tenant_id = $1 AND id = (SELECT id FROM orders WHERE tenant_id = $1 ORDER BY random() LIMIT 1)`, tn)
		return err
	case 4, 9: // twice as many new events as deleted or moved away, so the table never empties
		_, err := pool.Exec(ctx, `INSERT INTO events (tenant_id, kind, payload) VALUES ($1, 'live', $2)`, tn, fmt.Sprint(r.Int()))
		return err
	case 5:
		_, err := pool.Exec(ctx, `UPDATE events SET kind = 'touched', payload = payload || '!' WHERE id = (SELECT id FROM events WHERE tenant_id = $1 ORDER BY random() LIMIT 1)`, tn)
		return err
	case 6: // move an event to another tenant and maybe back
		other := 1 + r.IntN(5)
		if w.Router != nil {
			// A routed application cannot move a row into a tenant that
			// may live elsewhere: that is a write to the other tenant.
			other = tn
		}
		_, err := pool.Exec(ctx, `UPDATE events SET tenant_id = $2 WHERE id = (SELECT id FROM events WHERE tenant_id = $1 ORDER BY random() LIMIT 1)`, tn, other)
		return err
	case 7:
		_, err := pool.Exec(ctx, `DELETE FROM events WHERE id = (SELECT id FROM events WHERE tenant_id = $1 ORDER BY random() LIMIT 1)`, tn)
		return err
	default:
		_, err := pool.Exec(ctx, `UPDATE customers SET name = coalesce(name, '') || 'x' WHERE tenant_id = $1 AND id = (SELECT id FROM customers WHERE tenant_id = $1 ORDER BY random() LIMIT 1)`, tn)
		return err
	}
}

// Load starts perTenant writers on each tenant and returns a function that
// stops them and returns them for their counts.
func Load(ctx context.Context, dsn string, tenants []int, perTenant int) (stop func() []*Writer, err error) {
	return LoadRouted(ctx, dsn, tenants, perTenant, nil)
}

// LoadRouted is Load with writers that follow the catalog through router
// (nil: always the pooled database).
func LoadRouted(ctx context.Context, dsn string, tenants []int, perTenant int, router *Router) (stop func() []*Writer, err error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var ws []*Writer
	load := loads.Add(1)
	for i, tn := range tenants {
		for j := 0; j < perTenant; j++ {
			w := &Writer{Tenant: tn, ID: len(ws), Router: router, load: load}
			ws = append(ws, w)
			wg.Add(1)
			go func(seed uint64) { defer wg.Done(); w.Run(wctx, pool, seed) }(uint64(i*100 + j))
		}
	}
	return func() []*Writer {
		cancel()
		wg.Wait()
		pool.Close()
		return ws
	}, nil
}
