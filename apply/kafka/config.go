// Package kafka is the Kafka sink of `promoted replicate`: it writes one
// tenant's changes as the records Debezium's PostgreSQL connector (2.7)
// writes, field by field and byte for byte where the JSON allows, so the
// tools warehouses already run on Debezium topics (the unwrap transform,
// the JDBC sink, ClickHouse, Snowflake, Flink CDC, Materialize) read them
// unchanged. Delivery waits for acks=all, and the slot is acknowledged only
// past transactions whose every record the broker acknowledged.
package kafka

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// DebeziumVersion is the connector release whose format the records
// follow; it is what source.version says.
const DebeziumVersion = "2.7.4.Final"

// Config tunes the Kafka sink.
type Config struct {
	// Brokers is the bootstrap list (host:port).
	Brokers []string
	// Prefix is Debezium's topic.prefix: topics are PREFIX.schema.table
	// and source.name is PREFIX.
	Prefix string
	// Tombstones writes a record with a null value after each delete, so
	// compacted topics drop the key (tombstones.on.delete).
	Tombstones bool
	// TransactionMetadata writes BEGIN and END records to PREFIX.transaction
	// and a transaction block into each change (provide.transaction.metadata).
	TransactionMetadata bool
	// HeartbeatInterval, when positive, writes a heartbeat record to
	// __debezium-heartbeat.PREFIX at most this often while the tenant is
	// quiet (heartbeat.interval.ms).
	HeartbeatInterval time.Duration
	// NoSchema writes only the payloads, as JsonConverter does with
	// schemas.enable=false.
	NoSchema bool
	// DecimalHandling is decimal.handling.mode: precise, string or double.
	DecimalHandling string
	// BatchBytes bounds one produce request to one partition; keep it at or
	// under the topics' max.message.bytes.
	BatchBytes int
	// BatchRecords bounds the records of one produce request.
	BatchRecords int
	// FlushBytes makes Apply hand what it encoded to the broker once it
	// holds this much, without waiting for Flush, and encode on while that
	// is written: about twice this much is held at most.
	FlushBytes int
	// Timeout bounds one produce or metadata round trip.
	Timeout time.Duration
	// Partitions and ReplicationFactor are used for the topics the sink
	// creates (-1: the broker's defaults).
	Partitions        int
	ReplicationFactor int
	// RereadToast fills unchanged TOAST values (which pgoutput does not
	// send) with the row's current value, re-read from the source
	// (Sink.Fetch), instead of Debezium's placeholder: a later change may
	// already have replaced it there, and that change's own record
	// follows. A row gone since keeps the placeholder.
	RereadToast bool
}

// Bind registers the sink's flags. The brokers and the prefix come from
// --sink kafka://host:port[,host:port]/PREFIX (ParseSinkURL).
func (c *Config) Bind(fs *pflag.FlagSet) {
	fs.BoolVar(&c.Tombstones, "tombstones", true, "write a tombstone (same key, null value) after each delete, as Debezium's tombstones.on.delete")
	fs.BoolVar(&c.TransactionMetadata, "kafka-transaction-metadata", false, "write BEGIN/END records to PREFIX.transaction and a transaction block into each change, as Debezium's provide.transaction.metadata")
	fs.DurationVar(&c.HeartbeatInterval, "kafka-heartbeat-interval", 0, "write a heartbeat record to __debezium-heartbeat.PREFIX at most this often while the tenant is quiet (0: none)")
	fs.BoolVar(&c.NoSchema, "no-schema", false, "write payloads only, as JsonConverter with schemas.enable=false")
	fs.StringVar(&c.DecimalHandling, "decimal-handling", DecimalPrecise, "numeric as Debezium's decimal.handling.mode: precise, string or double")
	fs.IntVar(&c.BatchBytes, "kafka-batch-bytes", 1<<20, "largest produce request to one partition, in bytes (keep it under the topics' max.message.bytes)")
	fs.IntVar(&c.FlushBytes, "kafka-flush-bytes", 16<<20, "write buffered records once this many bytes are held")
	fs.DurationVar(&c.Timeout, "kafka-timeout", 30*time.Second, "longest a broker may take to answer one request")
	fs.IntVar(&c.Partitions, "kafka-partitions", -1, "partitions of the topics the sink creates (-1: the broker's num.partitions)")
	fs.IntVar(&c.ReplicationFactor, "kafka-replication-factor", -1, "replication factor of the topics the sink creates (-1: the broker's default)")
	fs.BoolVar(&c.RereadToast, "kafka-reread-toast", false, "fill unchanged TOAST values with the row's current value, re-read from the source, instead of Debezium's placeholder __debezium_unavailable_value (a later change may already show in it)")
}

// Validate fills defaults for zero values and refuses impossible ones.
func (c *Config) Validate() error {
	switch c.DecimalHandling {
	case "":
		c.DecimalHandling = DecimalPrecise
	case DecimalPrecise, DecimalString, DecimalDouble:
	default:
		return fmt.Errorf("--decimal-handling %q: pass precise, string or double", c.DecimalHandling)
	}
	switch {
	case len(c.Brokers) == 0:
		return fmt.Errorf("no Kafka brokers: pass --sink kafka://host:port/PREFIX")
	case c.Prefix == "":
		return fmt.Errorf("no topic prefix: pass --sink kafka://host:port/PREFIX")
	case !validTopicName(c.Prefix):
		return fmt.Errorf("topic prefix %q: use only letters, digits, '.', '_' and '-'", c.Prefix)
	case c.BatchBytes < 0 || c.FlushBytes < 0 || c.BatchRecords < 0:
		return fmt.Errorf("--kafka-batch-bytes and --kafka-flush-bytes must not be negative")
	case c.Timeout < 0 || c.HeartbeatInterval < 0:
		return fmt.Errorf("--kafka-timeout and --kafka-heartbeat-interval must not be negative")
	}
	if c.BatchBytes == 0 {
		c.BatchBytes = 1 << 20
	}
	if c.BatchRecords == 0 {
		c.BatchRecords = 10000
	}
	if c.FlushBytes == 0 {
		c.FlushBytes = 16 << 20
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Partitions == 0 {
		c.Partitions = -1
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = -1
	}
	return nil
}

// ParseSinkURL reads --sink kafka://host:port[,host:port]/PREFIX into the
// bootstrap brokers and the topic prefix.
func ParseSinkURL(s string) (brokers []string, prefix string, err error) {
	rest, ok := strings.CutPrefix(s, "kafka://")
	if !ok {
		return nil, "", fmt.Errorf("--sink %q: not a kafka:// URL", s)
	}
	hosts, path, _ := strings.Cut(rest, "/")
	for _, b := range strings.Split(hosts, ",") {
		if b == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(b); err != nil {
			b = net.JoinHostPort(b, "9092")
		}
		brokers = append(brokers, b)
	}
	prefix = strings.Trim(path, "/")
	if len(brokers) == 0 || prefix == "" {
		return nil, "", fmt.Errorf("--sink %q: expected kafka://host:port[,host:port]/PREFIX", s)
	}
	if !validTopicName(prefix) {
		return nil, "", fmt.Errorf("--sink %q: the prefix may hold only letters, digits, '.', '_' and '-'", s)
	}
	return brokers, prefix, nil
}

func validTopicName(s string) bool {
	if s == "" || len(s) > 249 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !validTopicChar(s[i]) {
			return false
		}
	}
	return true
}

func validTopicChar(c byte) bool {
	return c == '.' || c == '_' || c == '-' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
}

// topicName is Debezium's sanitizedTopicName: invalid characters become
// '_', and the name is cut at 249 characters.
func topicName(parts ...string) string {
	var b []byte
	for _, r := range strings.Join(parts, ".") {
		switch {
		case r < 0x80 && validTopicChar(byte(r)):
			b = append(b, byte(r))
		case r >= 0x10000:
			// Java replaces each UTF-16 unit of a surrogate pair.
			b = append(b, '_', '_')
		default:
			b = append(b, '_')
		}
	}
	if len(b) > 249 {
		b = b[:249]
	}
	return string(b)
}
