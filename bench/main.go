// Command bench measures promoted against what PostgreSQL itself does, in
// one run on the same clusters so a noisy machine's noise cancels out: the
// snapshot copy against a raw COPY pipe, the backlog drain and live lag
// against a native row-filtered subscription, verification against the
// raw checksum query, the other tenants' throughput against a run with no
// move, plus the cutover's write-blocked time and promoted's memory.
//
//	go run ./bench [-size default|small] [-out bench/out]
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/promoted/promoted/testenv"
)

func main() {
	size := flag.String("size", "default", "default (a 1M-order tenant in a pooled database ten times larger) or small (about a minute)")
	out := flag.String("out", "bench/out", "directory for the JSON report")
	bin := flag.String("bin", "", "promoted binary (default: build ./cmd/promoted)")
	only := flag.String("only", "", "comma-separated sections to run (copy,verify,drain,lag,kafka,cutover,neighbours,memory,scale,move); default all")
	flag.Parse()
	if *only != "" {
		sections = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			sections[strings.TrimSpace(s)] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	r, err := run(ctx, *size, *bin, os.Stdout)
	if r != nil {
		r.print(os.Stdout)
		if path, werr := r.write(*out); werr == nil {
			fmt.Printf("\nreport written to %s\n", path)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// sections limits a run to some figures (nil: all).
var sections map[string]bool

func want(s string) bool { return sections == nil || sections[s] }

// run performs a whole benchmark and returns its report.
func run(ctx context.Context, sizeName, bin string, log *os.File) (*Report, error) {
	sz, ok := sizes[sizeName]
	if !ok {
		return nil, fmt.Errorf("-size %q: use default, small or tiny", sizeName)
	}
	r := &Report{Size: sz.Name, Started: time.Now()}
	say := func(f string, a ...any) { fmt.Fprintf(log, "==> "+f+"\n", a...) }
	if bin == "" {
		dir, err := os.MkdirTemp("", "promoted-bench-bin-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "promoted")
		root, err := moduleRoot()
		if err != nil {
			return nil, err
		}
		build := exec.Command("go", "build", "-o", bin, "./cmd/promoted")
		build.Dir = root
		if b, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build promoted: %v\n%s", err, b)
		}
	}
	e := &env{size: sz, bin: bin}
	var err error
	setupPinning()
	if sourceCPUs != "" {
		say("pinning: the source cluster and pgbench on CPU %s; the target cluster, promoted and the psql clients on CPU %s", sourceCPUs, targetCPUs)
	}
	say("starting two PostgreSQL 15 clusters (same settings, fsync off on both)")
	if e.src, err = testenv.Start(ctx, testenv.Options{Name: "bench-src", CPUs: sourceCPUs, Settings: map[string]string{"max_wal_size": "4GB", "shared_buffers": "512MB"}}); err != nil {
		return nil, err
	}
	defer e.src.Stop()
	if e.dst, err = testenv.Start(ctx, testenv.Options{Name: "bench-dst", CPUs: targetCPUs, Settings: map[string]string{"max_wal_size": "4GB", "shared_buffers": "512MB"}}); err != nil {
		return nil, err
	}
	defer e.dst.Stop()
	if _, err = e.src.CreateDB(ctx, "pooled"); err != nil {
		return nil, err
	}
	if e.pooled, err = e.src.GrantTenantDB(ctx, "pooled"); err != nil {
		return nil, err
	}
	e.srcMover, e.srcApp = e.pooled.Mover, e.pooled.App
	say("seeding %d tenants of %d customers, %d orders, %d order lines each", sz.Tenants, sz.Customers, sz.Orders, sz.Lines)
	start := time.Now()
	if err := seed(ctx, e.pooled.Owner, sz); err != nil {
		return nil, err
	}
	if err := exec1(ctx, e.pooled.Owner, testenv.AppGrants("public")); err != nil {
		return nil, err
	}
	say("seeded in %.0f s", time.Since(start).Seconds())
	defer func() { r.Seconds = time.Since(r.Started).Seconds() }()

	var pc, ps, pn, pg []copyRun
	var copied string
	if want("copy") || want("verify") || want("memory") {
		say("1. snapshot copy: promoted vs psql | psql and PostgreSQL's initial sync, %d runs each", sz.Repeats)
	}
	for i := 0; i < sz.Repeats && (want("copy") || want("verify") || want("memory")); i++ {
		c, dst, err := e.promotedCopy(ctx)
		if err != nil {
			return r, err
		}
		pc, copied = append(pc, c), dst
		if !want("copy") {
			continue
		}
		p, err := e.psqlCopy(ctx)
		if err != nil {
			return r, err
		}
		ps = append(ps, p)
		n, err := e.nativeSync(ctx)
		if err != nil {
			return r, err
		}
		pn = append(pn, n)
		g, err := e.rawCopy(ctx, false)
		if err != nil {
			return r, err
		}
		pg = append(pg, g)
		say("   run %d: promoted %.0f rows/s, psql | psql %.0f rows/s, native initial sync %.0f rows/s, Go pipe %.0f rows/s",
			i+1, c.rowsPerSec(), p.rowsPerSec(), n.rowsPerSec(), g.rowsPerSec())
	}
	rows := func(rs []copyRun) float64 { return median(mapf(rs, copyRun.rowsPerSec)) }
	mb := func(rs []copyRun) float64 { return median(mapf(rs, copyRun.mbPerSec)) }
	if want("copy") {
		r.add("snapshot copy", "rows/s", rows(pc), rows(ps), "psql | psql, table by table", 1.0, false)
		r.add("snapshot copy", "rows/s", rows(pc), rows(pn), "native initial sync", 1.0, false)
		r.info("snapshot copy", "rows/s", rows(pc), rows(pg), "Go pipe, table by table")
		r.info("snapshot copy", "MB/s", mb(pc), 0, "")
	}

	if want("verify") {
		say("5. verification: promoted verify vs the raw checksum query")
		pv, rv, err := e.verifySpeed(ctx, copied)
		if err != nil {
			return r, err
		}
		r.add("verify", "rows/s", median(pv), median(rv), "count + sum(hash) per table", 0.8, false)
	}

	tenantScript, othersScript, err := e.scripts(os.TempDir())
	if err != nil {
		return r, err
	}
	var pd, nd []drainRun
	var catchRSS int64
	if want("drain") || want("memory") {
		say("2. backlog drain: %d pgbench transactions, promoted vs a native subscription", sz.Backlog)
		if pd, nd, catchRSS, err = e.drain(ctx, tenantScript, othersScript); err != nil {
			return r, err
		}
		for _, d := range pd {
			say("   promoted: %s", d)
		}
		for _, d := range nd {
			say("   native: %s", d)
		}
	}
	dr := func(d []drainRun) float64 {
		return median(mapf(d, func(x drainRun) float64 { return float64(x.changes) / x.secs }))
	}
	dw := func(d []drainRun) float64 {
		return median(mapf(d, func(x drainRun) float64 { return x.walMB / x.secs }))
	}
	if want("drain") {
		r.add("backlog drain", "tenant rows/s", dr(pd), dr(nd), "native subscription", 1.0, false)
		r.info("backlog drain, WAL decoded", "MB/s", dw(pd), dw(nd), "native subscription")
	}
	if want("lag") {
		if err := e.lagSection(ctx, r, tenantScript, othersScript, say); err != nil {
			return r, err
		}
	}
	if want("kafka") {
		say("11. replica into Kafka: snapshot and backlog drain into an in-process broker, promoted vs kcat -P with the same records")
		if err := e.kafkaSection(ctx, r, tenantScript, othersScript, say); err != nil {
			return r, err
		}
	}
	var small []sized
	var medium sized
	if want("cutover") || want("scale") {
		say("4. cutover: %d promotions under load (one of a tenant ten times bigger)", sz.Promotions)
		if small, medium, err = e.cutovers(ctx); err != nil {
			return r, err
		}
		blocked := mapf(small, func(x sized) float64 { return x.blocked })
		r.limit("writes blocked, small tenants, median of "+fmt.Sprint(len(blocked)), "ms", median(blocked), 250)
		r.limit("writes blocked, small tenants, max of "+fmt.Sprint(len(blocked)), "ms", percentile(blocked, 1), 1000)
	}
	if want("neighbours") {
		say("6. neighbour impact: other tenants' pgbench alone, during a promoted move, during a native subscription")
		ctl, pn, gn, nn, err := e.neighbours(ctx, othersScript)
		if err != nil {
			return r, err
		}
		say("   alone: %s", ctl)
		say("   during promoted's move: %s", pn)
		say("   during a gentle move: %s", gn)
		say("   during a native move: %s", nn)
		r.add("other tenants' throughput", "tps", pn.tps, ctl.tps, "no move (control)", 0.8, false)
		r.add("other tenants' throughput", "tps", pn.tps, nn.tps, "during a native move", 1.0, false)
		r.add("other tenants' transactions lost per move", "tx", pn.lost, nn.lost, "native move", 1.0, true)
		r.info("other tenants' throughput, gentle move", "tps", gn.tps, ctl.tps, "no move (control)")
		r.info("other tenants' throughput, native move", "tps", nn.tps, ctl.tps, "no move (control)")
		r.info("other tenants' p99 latency", "ms", pn.p99, ctl.p99, "no move (control)")
		r.info("other tenants' p99 latency, gentle move", "ms", gn.p99, ctl.p99, "no move (control)")
		r.info("other tenants' p99 latency, native move", "ms", nn.p99, ctl.p99, "no move (control)")
		r.info("move until caught up, under the other tenants' load", "s", pn.secs, nn.secs, "native move")
		r.info("other tenants' transactions lost, gentle move", "tx", gn.lost, nn.lost, "native move")
		r.info("source core on the move's sessions", "%", 100*pn.cpu.move/pn.secs, 100*nn.cpu.move/nn.secs, "native move")
		r.info("source core on the other tenants' sessions", "%", 100*pn.cpu.neighbours/pn.secs, 100*ctl.cpu.neighbours/ctl.secs, "no move (control)")
	}
	if want("memory") {
		say("7. memory")
		small, err := e.smallCopyRSS(ctx)
		if err != nil {
			return r, err
		}
		r.limit("peak RSS, snapshot of the big tenant", "MB", maxf(mapf(pc, func(c copyRun) float64 { return float64(c.rss) }))/1e6, 200)
		r.limit("peak RSS, catch-up", "MB", float64(catchRSS)/1e6, 200)
		r.limit("peak RSS, snapshot of a small tenant", "MB", float64(small)/1e6, 200)
	}
	// The last two promote the bench's own tenants, fencing them: nothing
	// after them may use those tenants.
	if want("scale") {
		say("8. scale: %d default-size tenants promoted under load", sz.Repeats)
		big, err := e.bigPromotions(ctx)
		if err != nil {
			return r, err
		}
		blocked := mapf(big, func(x sized) float64 { return x.blocked })
		r.limit(fmt.Sprintf("writes blocked, default-size tenants (%d rows), median of %d", big[0].rows, len(big)), "ms", median(blocked), 250)
		r.limit(fmt.Sprintf("writes blocked, default-size tenants (%d rows), max of %d", big[0].rows, len(big)), "ms", percentile(blocked, 1), 1000)
		for _, x := range []struct {
			name string
			s    sized
		}{{"small", medianBlocked(small)}, {"medium", medium}, {"default", medianBlocked(big)}} {
			r.info(fmt.Sprintf("scale: %s tenant, %d rows: copy", x.name, x.s.rows), "s", x.s.copySecs, 0, "")
			r.info(fmt.Sprintf("scale: %s tenant, %d rows: writes blocked", x.name, x.s.rows), "ms", x.s.blocked, 0, "")
		}
		last := big[len(big)-1]
		say("10. demotion: tenant %d back into the pooled tables, under the same load", last.tenant)
		dem, err := e.demotion(ctx, last)
		if err != nil {
			return r, err
		}
		r.info(fmt.Sprintf("demote: copy into live pooled tables, %d rows", dem.rows), "rows/s", float64(dem.rows)/dem.copySecs,
			float64(last.rows)/last.copySecs, "promote's copy of the same tenant")
		r.limit("writes blocked, demotion of a default-size tenant", "ms", dem.blocked, 1000)
	}
	if want("move") {
		say("9. the whole move, no writers: promote vs the manual offline pipeline (bare tables, psql | psql, keys), %d runs each", sz.Repeats)
		var runs, offs, copies, keys, verified, source, blocked []float64
		for i := 0; i < sz.Repeats; i++ {
			// Tenant 1, then the last tenants: the scale section moves
			// the ones after tenant 1.
			tenant := 1
			if i > 0 {
				tenant = sz.Tenants + 1 - i
			}
			secs, lines, err := e.promoteOnce(ctx, fmt.Sprint(tenant))
			if err != nil {
				return r, err
			}
			off, err := e.offline(ctx)
			if err != nil {
				return r, err
			}
			say("   promote of tenant %d: %.1f s; offline: %.1f s", tenant, secs, off)
			runs, offs = append(runs, secs), append(offs, off)
			copies = append(copies, num(lines["snapshot copied"], "seconds"))
			keys = append(keys, num(lines["keys built"], "seconds"))
			verified = append(verified, num(lines["verified"], "ms")/1000)
			source = append(source, num(lines["verified"], "source_ms")/1000)
			blocked = append(blocked, num(lines["catalog flipped"], "blocked_ms"))
		}
		copySecs := median(copies)
		r.add("one-shot promote, end to end", "s", median(runs), median(offs), "manual offline pipeline", 1.5, true)
		r.info("promote: copy", "s", copySecs, 0, "")
		r.info("promote: keys, indexes, ANALYZE", "s", median(keys), copySecs, "the copy")
		r.info("promote: verification after the keys", "s", median(verified), copySecs, "the copy")
		r.info("promote: source's side of the copy's check, beside the keys", "s", median(source), copySecs, "the copy")
		r.info("promote: writes blocked", "ms", median(blocked), 0, "")
	}
	return r, nil
}

// medianBlocked is the promotion with the median blocked time.
func medianBlocked(xs []sized) sized {
	if len(xs) == 0 {
		return sized{}
	}
	ys := append([]sized(nil), xs...)
	slices.SortFunc(ys, func(a, b sized) int { return cmp.Compare(a.blocked, b.blocked) })
	return ys[len(ys)/2]
}

// lagSection measures live lag and catch-up.
func (e *env) lagSection(ctx context.Context, r *Report, tenantScript, othersScript string, say func(string, ...any)) error {
	say("3. live lag under a steady load (%s), promoted vs native", e.size.Load)
	pl, nl, err := e.lag(ctx, tenantScript, othersScript)
	if err != nil {
		return err
	}
	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p99", 0.99}, {"max", 1}} {
		r.info("live lag "+p.name, "bytes", percentile(pl.bytes, p.q), percentile(nl.bytes, p.q), "native subscription")
		r.info("live lag "+p.name, "s", percentile(pl.secs, p.q), percentile(nl.secs, p.q), "native subscription")
	}
	r.add("catch-up after the load stops", "s", pl.catchup, nl.catchup, "native subscription", 1, true)
	// Both are polled every 10 ms: within that they are equal.
	if last := &r.Rows[len(r.Rows)-1]; pl.catchup <= nl.catchup+0.02 {
		met := true
		last.Met = &met
	}
	return nil
}

func mapf[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func maxf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(string(out[:len(out)-1])), nil
}
