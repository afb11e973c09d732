package job

import (
	"testing"
	"time"

	"github.com/promoted/promoted"
)

// TestLagClock: the lag is the time since the source first had WAL the
// target lacks; a position seen twice keeps its first time; caught up is 0,
// and a write after an idle hour is behind since that write, not the hour.
func TestLagClock(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var c lagClock
	c.sample(100, t0)
	c.sample(100, t0.Add(time.Second))
	c.sample(200, t0.Add(2*time.Second))
	if got := c.lagSeconds(50, t0.Add(5*time.Second)); got != 5 {
		t.Errorf("behind since the first sample past the applied position: %v s, want 5", got)
	}
	if got := c.lagSeconds(100, t0.Add(5*time.Second)); got != 3 {
		t.Errorf("position 100 applied: %v s, want 3 (behind since 200 was seen)", got)
	}
	if got := c.lagSeconds(200, t0.Add(5*time.Second)); got != 0 {
		t.Errorf("caught up: %v s, want 0", got)
	}
	c.sample(300, t0.Add(time.Hour))
	if got := c.lagSeconds(200, t0.Add(time.Hour+2*time.Second)); got != 2 {
		t.Errorf("a write after an idle hour: %v s, want 2", got)
	}
	for i := range maxLagSamples + 10 {
		c.sample(promoted.LSN(1000+i), t0.Add(2*time.Hour+time.Duration(i)*time.Millisecond))
	}
	if n := len(c.samples); n > maxLagSamples {
		t.Errorf("%d samples kept, want at most %d", n, maxLagSamples)
	}
	if got := c.lagSeconds(250, t0.Add(2*time.Hour)); got != 3600 {
		t.Errorf("after thinning, the oldest unapplied sample is kept: %v s, want 3600", got)
	}
}
