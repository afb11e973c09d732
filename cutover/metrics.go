package cutover

import (
	"time"

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
	armedAt = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_cutover_fence_armed_timestamp_seconds", Help: "When the cutover armed the write fence (Unix time); 0 once it flipped or disarmed, still set when disarming failed or the flip's outcome is unknown.",
	}, []string{"tenant"})
	timeoutSeconds = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_cutover_timeout_seconds", Help: "--cutover-timeout: the longest the tenant's writes may be fenced before the cutover gives up.",
	}, []string{"tenant"})
)

type metrics struct {
	attempts, aborted prometheus.Counter
	blocked           prometheus.Observer
	armedAt           prometheus.Gauge
}

// newMetrics binds the tenant's metrics and publishes the cutover
// timeout, so an alert can tell a fence armed for too long.
func newMetrics(tenant string, timeout time.Duration) *metrics {
	timeoutSeconds.WithLabelValues(tenant).Set(timeout.Seconds())
	return &metrics{attempts: attempts.WithLabelValues(tenant), aborted: aborted.WithLabelValues(tenant),
		blocked: blockedSeconds.WithLabelValues(tenant), armedAt: armedAt.WithLabelValues(tenant)}
}
