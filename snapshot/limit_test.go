package snapshot

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestLimiterPacesAllWorkers checks four workers sharing a 2 MB/s limit
// take at least the time 1 MB needs at that rate, and an unlimited one
// does not wait.
func TestLimiterPacesAllWorkers(t *testing.T) {
	l := newLimiter(2)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				l.wait(context.Background(), 10_000)
			}
		}()
	}
	wg.Wait()
	if took := time.Since(start); took < 450*time.Millisecond {
		t.Fatalf("1 MB at 2 MB/s took %s, want about 500ms", took)
	}
	start = time.Now()
	newLimiter(0).wait(context.Background(), 1<<30)
	if took := time.Since(start); took > 10*time.Millisecond {
		t.Fatalf("an unlimited copy waited %s", took)
	}
}
