package job

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	lagBytes = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_job_lag_bytes", Help: "WAL bytes between the source's reported end and what the target has durably applied.",
	}, []string{"tenant"})
	lagSeconds = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_job_lag_seconds", Help: "How long the source has had WAL the target has not durably applied (0 when caught up).",
	}, []string{"tenant"})
	retries = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_job_retries_total", Help: "Times the move reconnected and resumed after a transient failure (a connection lost, a server restarting).",
	}, []string{"tenant"})
	retainedBytes = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_job_retained_wal_bytes", Help: "WAL the move's slot holds back on the source (pg_current_wal_lsn() - restart_lsn).",
	}, []string{"tenant"})
	stalledSeconds = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_job_apply_stalled_seconds", Help: "How long the target has applied nothing while behind the source (0 while it advances or is caught up).",
	}, []string{"tenant"})
	retainedBudget = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_job_retained_wal_budget_bytes", Help: "--max-retained-wal: past it the move's slot is dropped and the move stops.",
	}, []string{"tenant"})
	failures = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_job_failures_total", Help: "Moves that stopped with an error, not a stop asked for (the CLI then exits).",
	}, []string{"tenant"})
)

type metrics struct {
	lag, lagSeconds, stalled, retained prometheus.Gauge
	retries, failures                  prometheus.Counter
}

// newMetrics binds the tenant's metrics and publishes its retained-WAL
// budget, so an alert can compare the retained WAL with it.
func newMetrics(tenant string, budget ByteSize) *metrics {
	retainedBudget.WithLabelValues(tenant).Set(float64(budget))
	return &metrics{lag: lagBytes.WithLabelValues(tenant), lagSeconds: lagSeconds.WithLabelValues(tenant), stalled: stalledSeconds.WithLabelValues(tenant),
		retained: retainedBytes.WithLabelValues(tenant), retries: retries.WithLabelValues(tenant),
		failures: failures.WithLabelValues(tenant)}
}
