package testenv

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

var cl *Cluster

func TestMain(m *testing.M) { Main(m.Run, Options{Name: "testenv"}, &cl) }

func TestClusterIsLogical(t *testing.T) {
	ctx := context.Background()
	dsn := cl.NewDB(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var level, version string
	if err := conn.QueryRow(ctx, "SELECT current_setting('wal_level'), current_setting('server_version_num')").Scan(&level, &version); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Fatalf("wal_level = %s, want logical", level)
	}
	if version < "150000" || version >= "160000" {
		t.Fatalf("server_version_num = %s, want 15", version)
	}
}
