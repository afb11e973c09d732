package testenv

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// TB is the part of testing.TB that testenv needs, so the package can be
// used outside tests (the demo, benchmarks) without importing testing.
type TB interface {
	Helper()
	Name() string
	Fatalf(format string, args ...any)
	Cleanup(func())
}

var dbSeq atomic.Int64

var unsafeName = regexp.MustCompile(`[^a-z0-9_]+`)

// NewDB creates a fresh database for one test and returns its DSN.
func (c *Cluster) NewDB(t TB) string {
	t.Helper()
	name := strings.ToLower(t.Name())
	name = unsafeName.ReplaceAllString(name, "_")
	if len(name) > 40 {
		name = name[:40]
	}
	name = fmt.Sprintf("%s_%d", name, dbSeq.Add(1))
	dsn, err := c.CreateDB(context.Background(), name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	// A slot left by a test pins WAL for the whole cluster the package
	// shares: drop the database's slots when the test ends.
	t.Cleanup(func() { c.dropSlots(name) })
	return dsn
}

func (c *Cluster) dropSlots(db string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	for i := 0; i < 20; i++ {
		conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, db)
		var left int
		conn.QueryRow(ctx, `SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE database = $1 AND NOT active`, db)
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, db).Scan(&left); err != nil || left == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Main starts the clusters a test package needs, runs its tests and stops
// them; it is the body of a TestMain. A missing server fails loudly.
func Main(run func() int, opts Options, clusters ...**Cluster) {
	ctx := context.Background()
	started := make([]*Cluster, 0, len(clusters))
	code := 1
	defer func() {
		for _, c := range started {
			c.Stop()
		}
		os.Exit(code)
	}()
	for i, dst := range clusters {
		o := opts
		o.Name = fmt.Sprintf("%s%d", opts.Name, i)
		c, err := Start(ctx, o)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return
		}
		started = append(started, c)
		*dst = c
	}
	code = run()
}
