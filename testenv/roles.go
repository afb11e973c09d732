package testenv

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// The roles of a production-like cluster. Tests, the demo and the
// benchmark run promoted as Mover and the application as App, never as a
// superuser: a superuser sees every session and passes every check a real
// mover fails.
const (
	// Owner owns the pooled tables (the schema migrations' role).
	Owner = "app_owner"
	// App writes tenants' rows and reads the catalog; neither superuser
	// nor owner.
	App = "app_writer"
	// Mover runs promoted with exactly the privileges the README lists.
	Mover = "mover"
)

// MoverGrants is what the README tells a DBA to run for promoted's role,
// cluster-wide; per database it also needs CREATE (see GrantMover).
var MoverGrants = []string{
	// Logical replication: the slot, its walsender, and the exported
	// snapshot the copy imports.
	`CREATE ROLE ` + Mover + ` LOGIN REPLICATION`,
	// CREATE PUBLICATION and the fence triggers need the tables' owner:
	// the mover acts as a member of the owning role.
	`GRANT ` + Owner + ` TO ` + Mover,
	// The apply runs with session_replication_role = replica on the
	// target, so its triggers and foreign keys do not fire twice.
	`GRANT SET ON PARAMETER session_replication_role TO ` + Mover,
}

var rolesOnce sync.Map // *Cluster -> *sync.Once

// EnsureRoles creates Owner, App and Mover on the cluster once; roles are
// cluster-wide, databases are per test.
func (c *Cluster) EnsureRoles(ctx context.Context) error {
	once, _ := rolesOnce.LoadOrStore(c, &sync.Once{})
	var err error
	once.(*sync.Once).Do(func() {
		var conn *pgx.Conn
		if conn, err = pgx.Connect(ctx, c.DSN("postgres")); err != nil {
			return
		}
		defer conn.Close(ctx)
		stmts := append([]string{`CREATE ROLE ` + Owner + ` LOGIN`, `CREATE ROLE ` + App + ` LOGIN`}, MoverGrants...)
		for _, s := range stmts {
			if _, err = conn.Exec(ctx, s); err != nil && !strings.Contains(err.Error(), "already exists") {
				err = fmt.Errorf("testenv %s: %s: %w", c.Name, s, err)
				return
			}
			err = nil
		}
	})
	return err
}

// TenantDB is a fresh database of a production-like cluster, with a
// connection string for each role.
type TenantDB struct {
	Name string
	// Admin is the superuser, for test setup and checks only.
	Admin, Owner, App, Mover string
}

// NewTenantDB creates a database owned by Owner (so Owner creates the
// pooled tables in public), where Mover may create promoted's schema and
// target schemas.
func (c *Cluster) NewTenantDB(t TB) TenantDB {
	t.Helper()
	ctx := context.Background()
	if err := c.EnsureRoles(ctx); err != nil {
		t.Fatalf("%v", err)
	}
	dsn := c.NewDB(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("%v", err)
	}
	db, err := c.GrantTenantDB(ctx, cfg.Database)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return db
}

// GrantTenantDB gives an existing database the production-like roles (see
// NewTenantDB), for callers outside tests (the demo, the benchmark).
func (c *Cluster) GrantTenantDB(ctx context.Context, name string) (TenantDB, error) {
	if err := c.EnsureRoles(ctx); err != nil {
		return TenantDB{}, err
	}
	if err := c.grantDB(ctx, name); err != nil {
		return TenantDB{}, err
	}
	return TenantDB{Name: name, Admin: c.DSN(name), Owner: c.DSN(name, Owner), App: c.DSN(name, App), Mover: c.DSN(name, Mover)}, nil
}

// SeedAsOwner fills the database with the SaaS schema (SeedSaaS) as Owner
// and lets App write it.
func (db TenantDB) SeedAsOwner(ctx context.Context, scale, bigFactor int) error {
	if err := SeedSaaS(ctx, db.Owner, scale, bigFactor); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, db.Owner)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, AppGrants("public"))
	return err
}

func (c *Cluster) grantDB(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	db := pgx.Identifier{name}.Sanitize()
	for _, s := range []string{`ALTER DATABASE ` + db + ` OWNER TO ` + Owner, `GRANT CREATE ON DATABASE ` + db + ` TO ` + Mover} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("testenv %s: %s: %w", c.Name, s, err)
		}
	}
	return nil
}

// AppGrants lets App write every table of schema (and use its
// sequences), as an application role is granted by the schema's owner.
func AppGrants(schema string) string {
	s := pgx.Identifier{schema}.Sanitize()
	return `GRANT USAGE ON SCHEMA ` + s + ` TO ` + App + `;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ` + s + ` TO ` + App + `;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ` + s + ` TO ` + App
}

// NewSaaS is a fresh pooled SaaS database (SeedSaaS) created by Owner,
// with App granted the right to write every tenant's rows.
func (c *Cluster) NewSaaS(t TB, scale, bigFactor int) TenantDB {
	t.Helper()
	db := c.NewTenantDB(t)
	if err := db.SeedAsOwner(context.Background(), scale, bigFactor); err != nil {
		t.Fatalf("%v", err)
	}
	return db
}
