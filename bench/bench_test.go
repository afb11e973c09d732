package main

import (
	"context"
	"os"
	"testing"
)

// TestSmallRun runs the whole benchmark at its tiny size, so it cannot
// rot: every figure must be measured (targets may be missed on a busy
// machine; the report says so, the test does not judge speed).
func TestSmallRun(t *testing.T) {
	r, err := run(context.Background(), "tiny", "", os.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	r.print(os.Stdout)
	want := map[string]bool{}
	for _, f := range []string{"snapshot copy", "verify", "backlog drain", "live lag p99", "catch-up after the load stops",
		"other tenants' throughput", "peak RSS, catch-up", "one-shot promote, end to end",
		"writes blocked, demotion of a default-size tenant"} {
		want[f] = false
	}
	for _, row := range r.Rows {
		if _, ok := want[row.Figure]; ok {
			want[row.Figure] = true
		}
		if row.Promoted < 0 || (row.Unit != "bytes" && row.Unit != "s" && row.Promoted == 0) {
			t.Errorf("%s (%s): promoted measured %v", row.Figure, row.Unit, row.Promoted)
		}
	}
	for f, seen := range want {
		if !seen {
			t.Errorf("the report lacks %q", f)
		}
	}
	if len(r.Rows) < 20 {
		t.Errorf("only %d figures in the report", len(r.Rows))
	}
}
