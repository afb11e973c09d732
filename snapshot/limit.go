package snapshot

import (
	"context"
	"sync"
	"time"
)

// limiter paces the copy's bytes across all workers, so a move can leave
// CPU and I/O to the other tenants of the source: with a limit of r MB/s,
// after b bytes at least b/r seconds have passed.
type limiter struct {
	rate  float64 // bytes per second; 0: unlimited
	mu    sync.Mutex
	start time.Time
	bytes float64
}

func newLimiter(mbPerSec float64) *limiter {
	return &limiter{rate: mbPerSec * 1e6}
}

// wait accounts n bytes and sleeps until they are within the rate.
func (l *limiter) wait(ctx context.Context, n int) {
	if l == nil || l.rate <= 0 || n <= 0 {
		return
	}
	l.mu.Lock()
	if l.start.IsZero() {
		l.start = time.Now()
	}
	l.bytes += float64(n)
	ahead := time.Duration(l.bytes/l.rate*float64(time.Second)) - time.Since(l.start)
	l.mu.Unlock()
	if ahead <= 0 {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(ahead):
	}
}
