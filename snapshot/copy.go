package snapshot

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/db"
)

// CopyConfig tunes the parallel copy.
type CopyConfig struct {
	// Parallel is the number of workers, each with one source and one
	// target session, all importing the same snapshot.
	Parallel int
	// ChunkRows splits a table whose tenant rows are estimated above this
	// into key ranges, so one big table can use several workers.
	ChunkRows int64
	// MaxRate limits the copy to this many MB/s across all workers
	// (0: unlimited).
	MaxRate float64
}

// Bind registers the copy's flags.
func (c *CopyConfig) Bind(fs *pflag.FlagSet) {
	fs.IntVar(&c.Parallel, "parallel", 4, "copy workers (each imports the same snapshot)")
	fs.Int64Var(&c.ChunkRows, "chunk-rows", 250000, "split tables with more tenant rows than this into key ranges copied in parallel")
	fs.Float64Var(&c.MaxRate, "copy-max-rate", 0, "limit the snapshot copy to this many MB/s, to spare the other tenants (0: unlimited)")
}

// Validate checks the values.
func (c *CopyConfig) Validate() error {
	switch {
	case c.Parallel < 0:
		return fmt.Errorf("--parallel %d is negative: pass a number of copy workers such as 4", c.Parallel)
	case c.Parallel == 0:
		c.Parallel = 4
	case c.Parallel > 64:
		return fmt.Errorf("--parallel %d is too many: use at most 64", c.Parallel)
	}
	switch {
	case c.ChunkRows < 0:
		return fmt.Errorf("--chunk-rows %d is negative: pass a number of rows such as 250000", c.ChunkRows)
	case c.ChunkRows == 0:
		c.ChunkRows = 250000
	}
	if c.MaxRate < 0 {
		return fmt.Errorf("--copy-max-rate %g is negative: pass MB/s, or 0 for no limit", c.MaxRate)
	}
	return nil
}

// copyBuffer is how much of the source's COPY output is handed to the
// target's COPY at a time.
const copyBuffer = 256 << 10

// TableResult is what the copy did for one table.
type TableResult struct {
	Rows, Bytes int64
	Chunks      int
	Duration    time.Duration
}

// chunk is one key range of one table; lo and hi are nil when unbounded.
type chunk struct {
	table  *promoted.Table
	col    string
	lo, hi *int64
}

// Copier copies the tenant's rows of every table under one exported
// snapshot.
type Copier struct {
	cfg       CopyConfig
	sourceDSN string
	targetDSN string
	snapshot  string
	tables    []*promoted.Table
	log       *slog.Logger
	m         *metrics
	// AfterChunk, when set, runs after each chunk is committed on the
	// target (tests inject crashes here).
	AfterChunk func(table string)

	limit   *limiter
	mu      sync.Mutex
	results map[*promoted.Table]*TableResult
	done    atomic.Int64
	bytes   atomic.Int64
}

// NewCopier prepares a copy; nothing runs until Run.
func NewCopier(cfg CopyConfig, sourceDSN, targetDSN, snapshot string, tables []*promoted.Table, log *slog.Logger) *Copier {
	tenant := ""
	if len(tables) > 0 {
		tenant = tables[0].TenantLiteral
	}
	return &Copier{cfg: cfg, sourceDSN: sourceDSN, targetDSN: targetDSN, snapshot: snapshot, tables: tables, log: log,
		m: newMetrics(tenant), results: map[*promoted.Table]*TableResult{}, limit: newLimiter(cfg.MaxRate)}
}

// RowsCopied is the running total, for progress reports.
func (c *Copier) RowsCopied() int64 { return c.done.Load() }

// BytesCopied is the running total of COPY bytes piped, for progress.
func (c *Copier) BytesCopied() int64 { return c.bytes.Load() }

// Run copies every table and returns per-table results.
func (c *Copier) Run(ctx context.Context) (map[*promoted.Table]*TableResult, error) {
	if err := c.cfg.Validate(); err != nil {
		return nil, err
	}
	chunks, err := c.plan(ctx)
	if err != nil {
		return nil, err
	}
	work := make(chan chunk)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(work)
		for _, ch := range chunks {
			select {
			case work <- ch:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	workers := min(c.cfg.Parallel, len(chunks))
	for range workers {
		g.Go(func() error { return c.worker(gctx, work) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return c.results, nil
}

// plan splits big tables into key ranges on the first integer key column
// after the tenant column. The outer ranges are open, so every row falls
// in exactly one range whatever the boundaries.
func (c *Copier) plan(ctx context.Context) ([]chunk, error) {
	var chunks []chunk
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(ctx)
		}
	}()
	for _, t := range c.tables {
		c.results[t] = &TableResult{}
		col := splitColumn(t)
		n := int64(1)
		if col != "" && t.EstimatedRows > c.cfg.ChunkRows {
			n = min((t.EstimatedRows+c.cfg.ChunkRows-1)/c.cfg.ChunkRows, 256)
		}
		if n <= 1 {
			chunks = append(chunks, chunk{table: t})
			continue
		}
		if conn == nil {
			var err error
			if conn, err = sourceConn(ctx, c.sourceDSN); err != nil {
				return nil, err
			}
		}
		var lo, hi *int64
		q := fmt.Sprintf("SELECT min(%[1]s)::bigint, max(%[1]s)::bigint FROM %[2]s WHERE %[3]s",
			pgx.Identifier{col}.Sanitize(), t.SourceRelation(), t.TenantPredicate())
		if err := conn.QueryRow(ctx, q).Scan(&lo, &hi); err != nil {
			return nil, fmt.Errorf("plan copy of %s: %w", t, err)
		}
		if lo == nil || hi == nil || *hi-*lo < n {
			chunks = append(chunks, chunk{table: t})
			continue
		}
		step := (*hi - *lo) / n
		var prev *int64
		for i := int64(1); i < n; i++ {
			b := *lo + i*step
			chunks = append(chunks, chunk{table: t, col: col, lo: prev, hi: &b})
			prev = &b
		}
		chunks = append(chunks, chunk{table: t, col: col, lo: prev})
	}
	return chunks, nil
}

// splitColumn is the first primary-key column other than the tenant column,
// when it is an integer.
func splitColumn(t *promoted.Table) string {
	for _, k := range t.PrimaryKey {
		if k == t.Tenant {
			continue
		}
		switch t.Columns[k].TypeOID {
		case 20, 21, 23:
			return t.Columns[k].Name
		}
		return ""
	}
	return ""
}

func sourceConn(ctx context.Context, dsn string) (*pgx.Conn, error) {
	return db.Open(ctx, db.Source, dsn, "promoted-copy")
}

// targetConn opens a copy session on the target with
// session_replication_role = replica, as the apply has: the copy carries
// rows the source already checked, so the target's triggers and foreign
// keys must not fire on them (a pooled table a demotion copies into has
// both, and the chunks of its parents and children arrive in any order).
func targetConn(ctx context.Context, dsn string) (*pgconn.PgConn, error) {
	conn, err := db.OpenRaw(ctx, db.Target, dsn, "promoted-copy", nil)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "SET session_replication_role = replica").ReadAll(); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("copy: the target role cannot set session_replication_role: GRANT SET ON PARAMETER session_replication_role TO the role: %w", err)
	}
	return conn, nil
}

func (c *Copier) worker(ctx context.Context, work <-chan chunk) error {
	src, err := sourceConn(ctx, c.sourceDSN)
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	dst, err := targetConn(ctx, c.targetDSN)
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())
	for ch := range work {
		if err := c.copyChunk(ctx, src.PgConn(), dst, ch); err != nil {
			return err
		}
	}
	return nil
}

// copyChunk pipes one key range: COPY (SELECT ...) TO STDOUT on the source,
// inside a REPEATABLE READ READ ONLY transaction that imported the slot's
// snapshot, straight into COPY FROM STDIN on the target. Each chunk has its
// own importing transaction, so no table lock outlives its copy
// (docs/hazards.md 1.3, 1.8).
func (c *Copier) copyChunk(ctx context.Context, src, dst *pgconn.PgConn, ch chunk) error {
	t := ch.table
	start := time.Now()
	// SET TRANSACTION SNAPSHOT must be the first statement, sent as plain
	// SQL with a literal: nothing may take a snapshot before it.
	if _, err := src.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT "+promoted.QuoteLiteral(c.snapshot)).ReadAll(); err != nil {
		return fmt.Errorf("copy %s: import snapshot %s (the exporting connection must stay open until the copy ends): %w", t, c.snapshot, err)
	}
	format := "binary"
	for _, col := range t.Columns {
		if col.BinaryUnsafe && !col.Generated {
			format = "text"
		}
	}
	cols := copyColumns(t)
	query := fmt.Sprintf("COPY (SELECT %s FROM %s WHERE %s%s) TO STDOUT (FORMAT %s)",
		cols, t.SourceRelation(), t.TenantPredicate(), ch.rangePredicate(), format)
	into := fmt.Sprintf("COPY %s (%s) FROM STDIN (FORMAT %s)", pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize(), cols, format)

	pr, pw := io.Pipe()
	counter := &countingReader{r: pr, ctx: ctx, limit: c.limit}
	var (
		wg     sync.WaitGroup
		outErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		// CopyTo writes every row's CopyData message separately: through
		// an unbuffered pipe each row would be a goroutine hand-off, which
		// made the copy several times slower than psql | psql.
		bw := bufio.NewWriterSize(pw, copyBuffer)
		_, outErr = src.CopyTo(ctx, bw, query)
		if outErr == nil {
			outErr = bw.Flush()
		}
		pw.CloseWithError(outErr)
	}()
	tag, inErr := dst.CopyFrom(ctx, counter, into)
	pr.CloseWithError(inErr)
	wg.Wait()
	if outErr != nil {
		return fmt.Errorf("copy %s out of the source: %w", t, outErr)
	}
	if inErr != nil {
		return fmt.Errorf("copy %s into the target: %w", t, inErr)
	}
	if _, err := src.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		return fmt.Errorf("copy %s: end source transaction: %w", t, err)
	}
	rows := tag.RowsAffected()
	c.done.Add(rows)
	c.bytes.Add(counter.n)
	c.m.rows.WithLabelValues(t.String()).Add(float64(rows))
	c.m.bytes.WithLabelValues(t.String()).Add(float64(counter.n))
	c.mu.Lock()
	r := c.results[t]
	r.Rows += rows
	r.Bytes += counter.n
	r.Chunks++
	r.Duration += time.Since(start)
	c.mu.Unlock()
	c.log.Debug("chunk copied", "table", t.String(), "rows", rows, "bytes", counter.n, "range", ch.rangePredicate())
	if c.AfterChunk != nil {
		c.AfterChunk(t.String())
	}
	return nil
}

func (ch chunk) rangePredicate() string {
	var b strings.Builder
	if ch.lo != nil {
		b.WriteString(" AND " + pgx.Identifier{ch.col}.Sanitize() + " >= " + strconv.FormatInt(*ch.lo, 10))
	}
	if ch.hi != nil {
		b.WriteString(" AND " + pgx.Identifier{ch.col}.Sanitize() + " < " + strconv.FormatInt(*ch.hi, 10))
	}
	return b.String()
}

// copyColumns lists the columns COPY carries: every column but the
// generated ones, which the target computes.
func copyColumns(t *promoted.Table) string {
	var names []string
	for _, c := range t.Columns {
		if !c.Generated {
			names = append(names, pgx.Identifier{c.Name}.Sanitize())
		}
	}
	return strings.Join(names, ", ")
}

type countingReader struct {
	r     io.Reader
	n     int64
	ctx   context.Context
	limit *limiter
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.limit.wait(c.ctx, n)
	return n, err
}
