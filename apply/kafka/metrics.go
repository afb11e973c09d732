package kafka

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	kafkaRecords = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_kafka_records_total", Help: "Records the broker acknowledged (changes, tombstones, transaction and heartbeat records).",
	}, []string{"tenant"})
	kafkaBytes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_kafka_bytes_total", Help: "Key and value bytes of the records the broker acknowledged.",
	}, []string{"tenant"})
	kafkaBatches = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_kafka_batches_total", Help: "Produce requests (one partition's record batch each) the broker acknowledged.",
	}, []string{"tenant"})
	kafkaErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_kafka_errors_total", Help: "Failures that stopped the Kafka sink (encoding or writing); the move resumes with a new sink.",
	}, []string{"tenant"})
	kafkaChanges = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_kafka_changes_total", Help: "Change records encoded, by Debezium op (r, c, u, d).",
	}, []string{"tenant", "op"})
	kafkaTxns = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_kafka_transactions_total", Help: "Source transactions encoded.",
	}, []string{"tenant"})
	kafkaFlushSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name: "promoted_kafka_flush_seconds", Help: "Time to write the buffered records and receive acks=all.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"tenant"})
	kafkaRereads = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "promoted_kafka_toast_rereads_total", Help: "Rows re-read from the source to fill unchanged TOAST values (--kafka-reread-toast).",
	}, []string{"tenant"})
	kafkaDurable = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "promoted_kafka_durable_lsn_bytes", Help: "End LSN of the last source transaction whose records the broker acknowledged (LSN as a number).",
	}, []string{"tenant"})
)

type metrics struct {
	records, bytes, batches, errors, txns, rereads prometheus.Counter
	changes                                        map[byte]prometheus.Counter
	flushSeconds                                   prometheus.Observer
	durable                                        prometheus.Gauge
}

func newMetrics(tenant string) *metrics {
	m := &metrics{
		records:      kafkaRecords.WithLabelValues(tenant),
		bytes:        kafkaBytes.WithLabelValues(tenant),
		batches:      kafkaBatches.WithLabelValues(tenant),
		errors:       kafkaErrors.WithLabelValues(tenant),
		txns:         kafkaTxns.WithLabelValues(tenant),
		rereads:      kafkaRereads.WithLabelValues(tenant),
		flushSeconds: kafkaFlushSeconds.WithLabelValues(tenant),
		durable:      kafkaDurable.WithLabelValues(tenant),
		changes:      map[byte]prometheus.Counter{},
	}
	for _, op := range []byte("rcud") {
		m.changes[op] = kafkaChanges.WithLabelValues(tenant, string(op))
	}
	return m
}

func (m *metrics) op(op byte) {
	if c, ok := m.changes[op]; ok {
		c.Inc()
	}
}
