package job

import (
	"sync"
	"time"

	"github.com/promoted/promoted"
)

// lagClock turns the catch-up's lag in bytes into a lag in time, the way
// PostgreSQL's walsender measures a standby's: it samples the source's WAL
// end with the moment it was seen, and the target is behind since the
// first sample past what it has applied. The source keeps no clock for a
// slot, and the commit time of the last applied transaction would read
// "an hour behind" for the first write after an idle hour.
type lagClock struct {
	mu sync.Mutex
	// samples hold increasing positions, each with when it was first seen.
	samples []lagSample
}

type lagSample struct {
	lsn promoted.LSN
	at  time.Time
}

// maxLagSamples bounds the clock's memory on a move that lags for days:
// past it, every other sample is dropped, coarsening the old ones.
const maxLagSamples = 1 << 14

// sample records the source's WAL end as seen at at. A position already
// seen keeps its earlier time.
func (c *lagClock) sample(end promoted.LSN, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.samples); n > 0 && c.samples[n-1].lsn >= end {
		return
	}
	if len(c.samples) >= maxLagSamples {
		kept := c.samples[:0]
		for i := 0; i < len(c.samples); i += 2 {
			kept = append(kept, c.samples[i])
		}
		c.samples = kept
	}
	c.samples = append(c.samples, lagSample{lsn: end, at: at})
}

// behindSince returns when the source first had WAL past applied that the
// target still lacks, and false when the target is caught up with every
// position sampled.
func (c *lagClock) behindSince(applied promoted.LSN) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := 0
	for i < len(c.samples) && c.samples[i].lsn <= applied {
		i++
	}
	c.samples = append(c.samples[:0], c.samples[i:]...)
	if len(c.samples) == 0 {
		return time.Time{}, false
	}
	return c.samples[0].at, true
}

// lagSeconds is behindSince as a duration up to now: 0 when caught up.
func (c *lagClock) lagSeconds(applied promoted.LSN, now time.Time) float64 {
	since, behind := c.behindSince(applied)
	if !behind {
		return 0
	}
	return max(now.Sub(since).Seconds(), 0)
}
