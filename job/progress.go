package job

import (
	"sync/atomic"

	"github.com/promoted/promoted"
)

// Progress is where a move stands, read at any moment from another
// goroutine: what a live display on a terminal (or `status`) draws from.
type Progress struct {
	// Phase is the job's phase: plan, prepare, snapshot, catchup, verify,
	// cutover...
	Phase string
	// RowsCopied and BytesCopied are the snapshot's running totals;
	// RowsEstimated and BytesEstimated the planner's estimate of the
	// tenant's rows and their size (0 before the plan).
	RowsCopied, RowsEstimated   int64
	BytesCopied, BytesEstimated int64
	// Lag is the WAL between the source's end and what the target holds;
	// LagSeconds how long the source has had WAL the target lacks.
	Lag        int64
	LagSeconds float64
	// Applied is the end LSN of the last transaction the target holds.
	Applied promoted.LSN
}

// estimates are the plan's totals, kept apart from the plan so that a
// display may read them while Run works.
type estimates struct{ rows, bytes atomic.Int64 }

func (j *Job) estimate(tables []*promoted.Table) {
	var rows, bytes int64
	for _, t := range tables {
		rows += max(t.EstimatedRows, 0)
		bytes += max(t.EstimatedBytes, 0)
	}
	j.est.rows.Store(rows)
	j.est.bytes.Store(bytes)
}

// Progress reads the move's progress; safe from any goroutine.
func (j *Job) Progress() Progress {
	p := Progress{Phase: j.Phase(), RowsEstimated: j.est.rows.Load(), BytesEstimated: j.est.bytes.Load(),
		Lag: j.Lag(), Applied: j.Applied()}
	p.LagSeconds = j.lagSeconds(p.Lag, p.Applied)
	j.mu.Lock()
	if j.copier != nil {
		p.RowsCopied, p.BytesCopied = j.copier.RowsCopied(), j.copier.BytesCopied()
	}
	j.mu.Unlock()
	return p
}
