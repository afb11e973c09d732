package job

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/promoted/promoted/state"
)

// TestCatalogRoutableFromTheFirstStep: an application that routes by
// the catalog reads it while the first move of its database starts. In
// the moment between promoted's schema appearing and the catalog being
// created, the application must see "no catalog yet" (every tenant at
// its default place), not "permission denied", which fails its writes.
func TestCatalogRoutableFromTheFirstStep(t *testing.T) {
	ctx := context.Background()
	db := src.NewTenantDB(t)
	mover, err := pgx.Connect(ctx, db.Mover)
	if err != nil {
		t.Fatal(err)
	}
	defer mover.Close(ctx)
	if err := state.EnsureSource(ctx, mover); err != nil {
		t.Fatal(err)
	}
	app := connectPinned(t, ctx, db.App)
	defer app.Close(ctx)
	var loc string
	err = app.QueryRow(ctx, `SELECT location FROM promoted.tenant_catalog WHERE tenant_id = '1'`).Scan(&loc)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Fatalf("the application reading the catalog before it exists: got %v, want undefined_table (42P01)", err)
	}
}
