package job

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	lagBytes = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_job_lag_bytes", Help: "WAL bytes between the source's reported end and what the target has durably applied.",
	}, []string{"tenant"})
	stalledSeconds = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_job_apply_stalled_seconds", Help: "How long the target has applied nothing while behind the source (0 while it advances or is caught up).",
	}, []string{"tenant"})
)

type metrics struct{ lag, stalled prometheus.Gauge }

func newMetrics(tenant string) *metrics {
	return &metrics{lag: lagBytes.WithLabelValues(tenant), stalled: stalledSeconds.WithLabelValues(tenant)}
}
