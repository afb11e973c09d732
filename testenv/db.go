package testenv

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
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
	return dsn
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
