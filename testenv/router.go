package testenv

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Router resolves a tenant's location from promoted's catalog the way an
// application following the catalog contract does: read the entry, connect
// to its location with its schema on the search_path, and re-read it when
// a write is fenced.
type Router struct {
	// CatalogDSN is the database holding promoted.tenant_catalog.
	CatalogDSN string
	// Default is the pooled database, used while the tenant has no entry.
	Default string
	// DSN maps a catalog location to a connection string.
	DSN func(location string) string

	mu    sync.Mutex
	pools map[string]*pgxpool.Pool
}

// Resolve returns a pool for the tenant's current location and the
// catalog version it came from (0: no entry yet).
func (r *Router) Resolve(ctx context.Context, tenant int) (*pgxpool.Pool, int64, error) {
	conn, err := pgx.Connect(ctx, r.CatalogDSN)
	if err != nil {
		return nil, 0, err
	}
	defer conn.Close(context.Background())
	dsn, schema, version := r.Default, "", int64(0)
	var loc string
	var sch *string
	err = conn.QueryRow(ctx, `SELECT location, schema_name, version FROM promoted.tenant_catalog WHERE tenant_id = $1`, fmt.Sprint(tenant)).Scan(&loc, &sch, &version)
	if err == nil {
		dsn = r.DSN(loc)
		if sch != nil {
			schema = *sch
		}
	} else if !errors.Is(err, pgx.ErrNoRows) && !isUndefinedTable(err) {
		return nil, 0, err
	}
	p, err := r.pool(ctx, dsn, schema)
	return p, version, err
}

func (r *Router) pool(ctx context.Context, dsn, schema string) (*pgxpool.Pool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := dsn + "\x00" + schema
	if p, ok := r.pools[key]; ok {
		return p, nil
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = schema
	}
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if r.pools == nil {
		r.pools = map[string]*pgxpool.Pool{}
	}
	r.pools[key] = p
	return p, nil
}

// Close closes the router's pools.
func (r *Router) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pools {
		p.Close()
	}
	r.pools = nil
}

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}
