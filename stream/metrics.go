package stream

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/promoted/promoted"
)

var (
	receivedBytes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_stream_received_bytes", Help: "pgoutput bytes received from the slot.",
	}, []string{"tenant"})
	receivedTxns = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_stream_transactions_total", Help: "Transactions of the tenant received (after filtering).",
	}, []string{"tenant"})
	skippedTxns = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_stream_skipped_transactions_total", Help: "Transactions skipped on resume because the target already had them.",
	}, []string{"tenant"})
	receivedChanges = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_stream_changes_total", Help: "Row changes of the tenant received, by operation.",
	}, []string{"tenant", "op"})
	sourceWALEnd = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_stream_source_wal_end_bytes", Help: "The source's WAL end as last reported by the walsender (LSN as a number).",
	}, []string{"tenant"})
	ackedLSN = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_stream_acknowledged_lsn_bytes", Help: "The flush LSN last acknowledged to the slot (LSN as a number).",
	}, []string{"tenant"})
)

type metrics struct {
	bytes, txns, skipped prometheus.Counter
	// changes is bound per operation once: a lookup by label values for
	// every change showed in the drain's profile.
	changes       [promoted.Message + 1]prometheus.Counter
	walEnd, acked prometheus.Gauge
}

func newMetrics(tenant string) *metrics {
	m := &metrics{
		bytes:   receivedBytes.WithLabelValues(tenant),
		txns:    receivedTxns.WithLabelValues(tenant),
		skipped: skippedTxns.WithLabelValues(tenant),
		walEnd:  sourceWALEnd.WithLabelValues(tenant),
		acked:   ackedLSN.WithLabelValues(tenant),
	}
	for _, op := range []promoted.Op{promoted.Insert, promoted.Update, promoted.Delete} {
		m.changes[op] = receivedChanges.WithLabelValues(tenant, op.String())
	}
	return m
}
