package apply

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/promoted/promoted"
)

var (
	appliedChanges = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_apply_changes_total", Help: "Row changes applied to the target, by operation.",
	}, []string{"tenant", "op"})
	appliedTxns = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_apply_transactions_total", Help: "Source transactions applied to the target.",
	}, []string{"tenant"})
	targetCommits = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_apply_commits_total", Help: "Target transactions committed (each holds one or more whole source transactions).",
	}, []string{"tenant"})
	commitSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name: "promoted_apply_commit_seconds", Help: "Time to send and commit one target transaction's last pipeline.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"tenant"})
	appliedLSN = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_apply_durable_lsn_bytes", Help: "End LSN of the last source transaction durably applied to the target (LSN as a number).",
	}, []string{"tenant"})
	refetches = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_apply_refetches_total", Help: "Rows re-read from the source because pgoutput sent unchanged TOAST values for a row new to the target.",
	}, []string{"tenant"})
)

type metrics struct {
	// changes is bound per operation at construction: the apply counts
	// every row change.
	changes       map[promoted.Op]prometheus.Counter
	txns, commits prometheus.Counter
	refetches     prometheus.Counter
	commitSeconds prometheus.Observer
	applied       prometheus.Gauge
}

func newMetrics(tenant string) *metrics {
	return &metrics{
		changes:       changeCounters(tenant),
		txns:          appliedTxns.WithLabelValues(tenant),
		commits:       targetCommits.WithLabelValues(tenant),
		refetches:     refetches.WithLabelValues(tenant),
		commitSeconds: commitSeconds.WithLabelValues(tenant),
		applied:       appliedLSN.WithLabelValues(tenant),
	}
}

func changeCounters(tenant string) map[promoted.Op]prometheus.Counter {
	out := map[promoted.Op]prometheus.Counter{}
	for _, op := range []promoted.Op{promoted.Insert, promoted.Update, promoted.Delete} {
		out[op] = appliedChanges.WithLabelValues(tenant, op.String())
	}
	return out
}
