package cutover

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	attempts = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_cutover_attempts_total", Help: "Times the write fence was armed for a cutover.",
	}, []string{"tenant"})
	aborted = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_cutover_aborted_total", Help: "Cutovers that disarmed the fence and left the source authoritative.",
	}, []string{"tenant"})
	blockedSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name: "promoted_cutover_blocked_seconds", Help: "Time the tenant's writes were fenced: fence armed to catalog flipped.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
	}, []string{"tenant"})
)

type metrics struct {
	attempts, aborted prometheus.Counter
	blocked           prometheus.Observer
}

func newMetrics(tenant string) *metrics {
	return &metrics{attempts: attempts.WithLabelValues(tenant), aborted: aborted.WithLabelValues(tenant),
		blocked: blockedSeconds.WithLabelValues(tenant)}
}
