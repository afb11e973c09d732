package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/promoted/promoted/job"
)

// TestProgressLines pins what the live line says in each phase, from
// successive readings: the snapshot's bar with its estimate, rate and
// ETA; the catch-up's lag falling (with the time to catch up), growing,
// or caught up.
func TestProgressLines(t *testing.T) {
	v := &progressView{}
	t0 := time.Unix(0, 0)
	v.render(job.Progress{Phase: "snapshot", RowsEstimated: 1_000_000}, t0)
	var got string
	for i := 1; i <= 20; i++ { // 100k rows/s, steady
		got = v.render(job.Progress{Phase: "snapshot", RowsCopied: int64(i) * 25_000, BytesCopied: int64(i) << 20, RowsEstimated: 1_000_000}, t0.Add(time.Duration(i)*250*time.Millisecond))
	}
	if want := "snapshot [############------------]  50% 500k of ~1.0M rows, 20.0 MB, 100k rows/s, ETA 5s"; got != want {
		t.Errorf("snapshot line:\n got %q\nwant %q", got, want)
	}
	if got := snapshotLine(job.Progress{Phase: "snapshot", RowsCopied: 1500, RowsEstimated: 1000}, 0); got != "snapshot 1500 rows, 0 B" {
		t.Errorf("past the estimate: %q", got)
	}
	v = &progressView{}
	lag := int64(8 << 20)
	for i := 0; i <= 20; i++ { // falling 1 MB/s
		got = v.render(job.Progress{Phase: "catchup", Lag: lag - int64(i)<<18, LagSeconds: 2.5, Applied: 0x1000}, t0.Add(time.Duration(i)*250*time.Millisecond))
	}
	if want := "catch-up: lag 3.0 MB (2.5s), applied up to 0/1000, falling 1.0 MB/s, caught up in ~3s"; got != want {
		t.Errorf("falling lag:\n got %q\nwant %q", got, want)
	}
	for i := 21; i <= 100; i++ { // growing 1 MB/s
		got = v.render(job.Progress{Phase: "catchup", Lag: 3<<20 + int64(i-20)<<18}, t0.Add(time.Duration(i)*250*time.Millisecond))
	}
	if !regexp.MustCompile(`lag 23\.0 MB \(0\.0s\), .*, growing (1\.0 MB|102\d kB)/s$`).MatchString(got) {
		t.Errorf("growing lag: %q", got)
	}
	if got := catchupLine(job.Progress{Phase: "catchup"}, 0); !strings.HasSuffix(got, ", caught up") {
		t.Errorf("caught up: %q", got)
	}
}

// TestLogLinesGoAboveTheLiveLine: a log line written while the live line
// shows clears it, and the live line is drawn again below the log line.
func TestLogLinesGoAboveTheLiveLine(t *testing.T) {
	var out bytes.Buffer
	l := &liveLine{out: &out}
	l.draw("snapshot 10 rows")
	l.Write([]byte("level=INFO msg=phase\n"))
	l.end()
	if want := "\r\033[Ksnapshot 10 rows\r\033[Klevel=INFO msg=phase\nsnapshot 10 rows\n"; out.String() != want {
		t.Errorf("terminal output %q, want %q", out.String(), want)
	}
}

// TestProgressBarOfAPromotion runs a promotion with --progress bar (its
// stderr is a pipe here, where auto would choose log lines): the
// snapshot's bar is drawn with the plan's estimate, and the periodic
// progress log lines are left out.
func TestProgressBarOfAPromotion(t *testing.T) {
	s := src.NewSaaS(t, 200, 2)
	d := dst.NewTenantDB(t)
	code, _, stderr := runCLI(t, "promote", "--source", s.Mover, "--target", d.Mover, "--tenant", "1",
		"--progress", "bar", "--progress-interval", "100ms", "--copy-max-rate", "0.2", "--parallel", "1", "--chunk-rows", "500")
	if code != 0 {
		t.Fatalf("promote exited %d: %s", code, stderr)
	}
	if !regexp.MustCompile(`\r\033\[Ksnapshot \[[#-]{24}\] +\d+% [0-9.kM]+ of ~[0-9.kM]+ rows`).MatchString(stderr) {
		t.Errorf("no snapshot bar in stderr:\n%q", stderr)
	}
	if strings.Contains(stderr, "msg=progress") {
		t.Errorf("progress log lines beside the live line:\n%s", stderr)
	}
	if !strings.Contains(stderr, "msg=phase") {
		t.Errorf("the log lines are gone:\n%s", stderr)
	}
}
