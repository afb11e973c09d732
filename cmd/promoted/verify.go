package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/promoted/promoted/job"
	"github.com/promoted/promoted/verify"
)

// verifyCmd compares a live replica with its source at one consistent
// point: it resumes the move's stream, pauses the apply exactly at the
// LSN of a source snapshot, compares counts and checksums per table
// (bisecting to the differing keys), and stops. A daemon running the move
// is asked through its /verify endpoint instead.
func verifyCmd(ctx context.Context, args []string) error {
	m, err := parseMove("verify", args, moveSpec{targetFlag: "target", targetHelp: "target database connection string"})
	if err != nil {
		return err
	}
	cfg, log := m.cfg, m.log
	cfg.VerifyOnly = true
	j, err := job.New(cfg, log)
	if err != nil {
		return usageOf(err)
	}
	stopProgress := m.showProgress(ctx, j)
	err = j.Run(ctx)
	stopProgress()
	if err != nil {
		return fmt.Errorf("%w (a daemon running this move answers GET /verify on its --metrics-addr)", err)
	}
	return report(os.Stdout, j.Verified())
}

func report(w io.Writer, res *verify.Result) error {
	if res == nil {
		return errors.New("verification did not run")
	}
	for _, t := range res.Tables {
		status := "equal"
		if !t.Equal() {
			status = "DIFFERENT"
		}
		fmt.Fprintf(w, "  %-30s source %9d rows, target %9d rows: %s\n", t.Table, t.SourceRows, t.TargetRows, status)
	}
	fmt.Fprintf(w, "verified %d rows in %d ms\n", res.Rows, res.Duration.Milliseconds())
	if !res.Equal() {
		return fmt.Errorf("the target differs from the source: %s", strings.ReplaceAll(res.Summary(), "\n", "; "))
	}
	return nil
}

// verifyHandler serves GET /verify on a running daemon's metrics address:
// 200 when equal, 422 with the differences, 409 while another
// verification runs, 503 when the move cannot verify yet. A verification
// reads the whole tenant on both databases, so only clients on this host
// are answered unless remote.
func verifyHandler(j *job.Job, remote bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !remote && !loopback(r.RemoteAddr) {
			http.Error(w, "GET /verify is answered only on this host (start promoted with --verify-remote to allow others)", http.StatusForbidden)
			return
		}
		res, err := j.VerifyLive(r.Context())
		switch {
		case errors.Is(err, job.ErrVerifyBusy):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if !res.Equal() {
			w.WriteHeader(http.StatusUnprocessableEntity)
		}
		report(w, res)
	})
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
