package testenv

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kfake"
)

// KafkaPartitions is how many partitions an auto-created topic of the test
// broker has: more than one, so murmur2 partitioning and per-partition
// ordering are exercised, and few enough that tests stay fast.
const KafkaPartitions = 3

// Kafka is an in-process Kafka broker (franz-go's kfake) listening on a
// free 127.0.0.1 port. It speaks the real Kafka protocol over TCP, so
// clients (kafka-go, kcat) talk to it as to any broker; topics are created
// on first use with KafkaPartitions partitions.
type Kafka struct {
	cluster *kfake.Cluster
	addr    string
}

// StartKafka starts one broker. Close stops it.
func StartKafka(ctx context.Context) (*Kafka, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(KafkaPartitions),
		kfake.ClusterID("promoted-test"),
	)
	if err != nil {
		return nil, fmt.Errorf("testenv kafka: start broker: %w", err)
	}
	addrs := c.ListenAddrs()
	if len(addrs) == 0 {
		c.Close()
		return nil, fmt.Errorf("testenv kafka: the broker listens nowhere")
	}
	return &Kafka{cluster: c, addr: addrs[0]}, nil
}

// Addr is the broker's host:port, for bootstrap lists and kcat's -b.
func (k *Kafka) Addr() string { return k.addr }

// Cluster is the underlying fake cluster, for tests that inject broker
// failures (kfake's Control hooks) or move partitions.
func (k *Kafka) Cluster() *kfake.Cluster { return k.cluster }

// Close stops the broker; its topics are gone. Clients still connected
// see their connections closed, as with a broker that died.
func (k *Kafka) Close() { k.cluster.Close() }
