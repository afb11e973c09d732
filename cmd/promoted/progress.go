package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/promoted/promoted/job"
)

// liveLine is the one line at the bottom of a terminal that shows a move's
// progress while it runs: a bar for the snapshot, then the catch-up's lag
// and how soon the cutover can come. Log lines are written through it, so
// each appears above the line, which is drawn again below it.
type liveLine struct {
	mu   sync.Mutex
	out  io.Writer
	line string
}

// Write prints a log line above the live line.
func (l *liveLine) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.line != "" {
		io.WriteString(l.out, "\r\033[K")
	}
	n, err := l.out.Write(p)
	if l.line != "" {
		io.WriteString(l.out, l.line)
	}
	return n, err
}

func (l *liveLine) draw(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s == l.line {
		return
	}
	io.WriteString(l.out, "\r\033[K"+s)
	l.line = s
}

// end leaves the last state on screen and moves below it.
func (l *liveLine) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.line != "" {
		io.WriteString(l.out, "\n")
		l.line = ""
	}
}

// progressMode resolves --progress: the live line when asked for, or by
// default when stderr is a terminal and the logs are text for people.
func progressMode(mode, logFormat string) (bool, error) {
	switch mode {
	case "bar":
		return true, nil
	case "log":
		return false, nil
	case "auto":
		return logFormat == "text" && term.IsTerminal(int(os.Stderr.Fd())), nil
	}
	return false, fmt.Errorf("%w: --progress %q: use auto, bar or log", errUsage, mode)
}

// showProgress draws j's progress on the live line until the returned
// stop is called (a no-op without a live line).
func (m *moveCommand) showProgress(ctx context.Context, j *job.Job) func() {
	if m.live == nil || m.cfg.DryRun {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		v := &progressView{}
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			m.live.draw(v.render(j.Progress(), time.Now()))
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
		m.live.end()
	}
}

// progressView turns successive progress readings into the live line,
// with rates smoothed over the last few seconds.
type progressView struct {
	last           job.Progress
	at             time.Time
	rowRate, fall  float64 // rows/s copied; lag bytes/s caught up (negative: growing)
	lags           int     // readings averaged into fall
	copyFrom       time.Time
	copyRows       int64
	started, lagOK bool
}

func (v *progressView) render(p job.Progress, now time.Time) string {
	// The copy counts rows a chunk at a time, so its rate is the average
	// since the snapshot began; the lag moves smoothly, so its rate is a
	// moving average that follows a change of pace within seconds.
	if p.Phase == "snapshot" && v.copyFrom.IsZero() {
		v.copyFrom, v.copyRows = now, p.RowsCopied
	}
	if dt := now.Sub(v.copyFrom).Seconds(); p.Phase == "snapshot" && dt > 0 {
		v.rowRate = float64(p.RowsCopied-v.copyRows) / dt
	}
	if dt := now.Sub(v.at).Seconds(); v.started && dt > 0 && v.lagOK && p.Phase == "catchup" {
		v.fall = smooth(v.fall, float64(v.last.Lag-p.Lag)/dt, v.lags)
		v.lags++
	}
	v.lagOK = p.Phase == "catchup"
	v.started, v.last, v.at = true, p, now
	switch p.Phase {
	case "snapshot":
		return snapshotLine(p, v.rowRate)
	case "catchup":
		return catchupLine(p, v.fall)
	}
	return p.Phase + "..."
}

// smooth is an exponentially weighted average over about 8 readings
// (2 s), starting from the first (n is how many came before x).
func smooth(avg, x float64, n int) float64 {
	if n == 0 {
		return x
	}
	return avg + (x-avg)/8
}

func snapshotLine(p job.Progress, rate float64) string {
	var b strings.Builder
	b.WriteString("snapshot ")
	if p.RowsEstimated > 0 && p.RowsCopied <= p.RowsEstimated {
		const width = 24
		done := int(float64(width) * float64(p.RowsCopied) / float64(p.RowsEstimated))
		fmt.Fprintf(&b, "[%s%s] %3d%% %s of ~%s rows", strings.Repeat("#", done), strings.Repeat("-", width-done),
			100*p.RowsCopied/p.RowsEstimated, rowCount(p.RowsCopied), rowCount(p.RowsEstimated))
	} else {
		fmt.Fprintf(&b, "%s rows", rowCount(p.RowsCopied))
	}
	fmt.Fprintf(&b, ", %s", size(p.BytesCopied))
	if rate > 0 {
		fmt.Fprintf(&b, ", %s rows/s", rowCount(int64(math.Round(rate))))
		if left := p.RowsEstimated - p.RowsCopied; left > 0 {
			fmt.Fprintf(&b, ", ETA %s", eta(float64(left)/rate))
		}
	}
	return b.String()
}

func catchupLine(p job.Progress, fall float64) string {
	s := fmt.Sprintf("catch-up: lag %s (%.1fs), applied up to %s", size(p.Lag), p.LagSeconds, p.Applied)
	switch {
	case p.Lag == 0:
		return s + ", caught up"
	case fall > 1:
		return s + fmt.Sprintf(", falling %s/s, caught up in ~%s", size(int64(math.Round(fall))), eta(float64(p.Lag)/fall))
	case fall < -1:
		return s + fmt.Sprintf(", growing %s/s", size(int64(math.Round(-fall))))
	}
	return s
}

func rowCount(n int64) string {
	switch {
	case n >= 10_000_000:
		return fmt.Sprintf("%.0fM", float64(n)/1e6)
	case n >= 1_000_000:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 10_000:
		return fmt.Sprintf("%.0fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f kB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func eta(seconds float64) string {
	return (time.Duration(seconds) * time.Second).Round(time.Second).String()
}
