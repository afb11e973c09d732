package job

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var lagBytes = promauto.NewGaugeVec(prometheus.GaugeOpts{
	Name: "promoted_job_lag_bytes", Help: "WAL bytes between the source's reported end and what the target has durably applied.",
}, []string{"tenant"})

type metrics struct{ lag prometheus.Gauge }

func newMetrics(tenant string) *metrics { return &metrics{lag: lagBytes.WithLabelValues(tenant)} }
