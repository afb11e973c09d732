package snapshot

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	copiedRows = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_snapshot_rows_total", Help: "Tenant rows copied under the snapshot, per table.",
	}, []string{"tenant", "table"})
	copiedBytes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_snapshot_copied_bytes", Help: "COPY bytes piped from source to target, per table.",
	}, []string{"tenant", "table"})
)

type metrics struct {
	rows, bytes *prometheus.CounterVec
}

func newMetrics(tenant string) *metrics {
	return &metrics{
		rows:  copiedRows.MustCurryWith(prometheus.Labels{"tenant": tenant}),
		bytes: copiedBytes.MustCurryWith(prometheus.Labels{"tenant": tenant}),
	}
}
