package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// copyRun is one snapshot copy: rows and COPY bytes moved, and how long.
type copyRun struct {
	rows, bytes int64
	secs        float64
	rss         int64
}

func (r copyRun) rowsPerSec() float64 { return float64(r.rows) / r.secs }
func (r copyRun) mbPerSec() float64   { return float64(r.bytes) / r.secs / 1e6 }

// tenantWhere is the moving tenant of the benchmark.
const tenantWhere = "tenant_id = 1"

// promotedCopy runs `promoted replicate` into a fresh target database and
// reads the snapshot figures promoted logs; the process is stopped once it
// streams and the move cancelled. It returns the target DSN too.
func (e *env) promotedCopy(ctx context.Context) (copyRun, string, error) {
	dstDSN, err := e.newTarget(ctx, "copy")
	if err != nil {
		return copyRun{}, "", err
	}
	d, err := startDaemon(ctx, e.bin, "replicate", "--source", e.srcMover, "--sink", e.mover(dstDSN), "--tenant", "1", "--tables", strings.Join(benchTables, ","))
	if err != nil {
		return copyRun{}, "", err
	}
	defer func() {
		d.stop()
		exec1(context.Background(), e.srcMover, "SELECT 1") // keep the source warm
		runCancel(e.bin, e.srcMover)
	}()
	line, err := d.waitLine(ctx, "snapshot copied", 30*time.Minute)
	if err != nil {
		return copyRun{}, "", err
	}
	if _, err := d.waitLine(ctx, "streaming", 10*time.Minute); err != nil {
		return copyRun{}, "", err
	}
	r := copyRun{rows: int64(num(line, "rows")), bytes: int64(num(line, "bytes")), secs: num(line, "seconds"), rss: d.peakRSS("snapshot")}
	return r, dstDSN, nil
}

func runCancel(bin, srcDSN string) {
	cmd := execCommand(bin, "cancel", "--source", srcDSN, "--tenant", "1")
	cmd.Run()
}

// rawCopy is the baseline: COPY (SELECT ...) TO STDOUT (FORMAT binary)
// piped into COPY ... FROM STDIN (FORMAT binary), table by table or all
// tables at once, into bare tables.
func (e *env) rawCopy(ctx context.Context, parallel bool) (copyRun, error) {
	dstDSN, err := e.newTarget(ctx, "raw")
	if err != nil {
		return copyRun{}, err
	}
	if err := exec1(ctx, dstDSN, benchSchema); err != nil {
		return copyRun{}, err
	}
	start := time.Now()
	var total copyRun
	counts := make([]copyRun, len(benchTables))
	one := func(i int) error {
		n, b, err := pipe(ctx, e.srcMover, dstDSN, benchTables[i])
		counts[i] = copyRun{rows: n, bytes: b}
		return err
	}
	if parallel {
		var g errgroup.Group
		for i := range benchTables {
			g.Go(func() error { return one(i) })
		}
		err = g.Wait()
	} else {
		for i := range benchTables {
			if err = one(i); err != nil {
				break
			}
		}
	}
	if err != nil {
		return copyRun{}, err
	}
	for _, c := range counts {
		total.rows += c.rows
		total.bytes += c.bytes
	}
	total.secs = time.Since(start).Seconds()
	return total, nil
}

func pipe(ctx context.Context, srcDSN, dstDSN, table string) (int64, int64, error) {
	s, err := pgx.Connect(ctx, srcDSN)
	if err != nil {
		return 0, 0, err
	}
	defer s.Close(ctx)
	d, err := pgx.Connect(ctx, dstDSN)
	if err != nil {
		return 0, 0, err
	}
	defer d.Close(ctx)
	pr, pw := io.Pipe()
	cr := &counter{r: pr}
	errc := make(chan error, 1)
	go func() {
		_, err := s.PgConn().CopyTo(ctx, pw, fmt.Sprintf("COPY (SELECT * FROM %s WHERE %s) TO STDOUT (FORMAT binary)", table, tenantWhere))
		pw.CloseWithError(err)
		errc <- err
	}()
	tag, err := d.PgConn().CopyFrom(ctx, cr, fmt.Sprintf("COPY %s FROM STDIN (FORMAT binary)", table))
	pr.CloseWithError(err)
	if err2 := <-errc; err == nil {
		err = err2
	}
	return tag.RowsAffected(), cr.n, err
}

type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// smallCopyRSS is promoted's peak memory copying only the tenant's
// customers, a fortieth of its rows, to show memory does not grow with
// the tenant.
func (e *env) smallCopyRSS(ctx context.Context) (int64, error) {
	dstDSN, err := e.newTarget(ctx, "small")
	if err != nil {
		return 0, err
	}
	d, err := startDaemon(ctx, e.bin, "replicate", "--source", e.srcMover, "--sink", e.mover(dstDSN), "--tenant", "1", "--tables", "customers")
	if err != nil {
		return 0, err
	}
	defer func() { d.stop(); runCancel(e.bin, e.srcMover) }()
	if _, err := d.waitLine(ctx, "streaming", 10*time.Minute); err != nil {
		return 0, err
	}
	// A small copy can end between two samples; the high-water mark up to
	// the start of streaming covers it (and the plan before it).
	return max(d.peakRSS("snapshot"), d.hwm()), nil
}
