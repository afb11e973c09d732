package testenv

import (
	"context"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// TestKafkaSpeaksTheProtocol produces with kafka-go over TCP into an
// auto-created topic and reads the records back, checking the topic got
// KafkaPartitions partitions.
func TestKafkaSpeaksTheProtocol(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := StartKafka(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	w := &kafkago.Writer{Addr: kafkago.TCP(k.Addr()), Topic: "t", RequiredAcks: kafkago.RequireAll,
		AllowAutoTopicCreation: true, BatchTimeout: time.Millisecond}
	defer w.Close()
	msgs := []kafkago.Message{{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("b"), Value: []byte("2")}}
	for attempt := 0; ; attempt++ {
		// The first write may race the topic's creation.
		if err = w.WriteMessages(ctx, msgs...); err == nil || attempt == 20 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kafkago.DialContext(ctx, "tcp", k.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions("t")
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != KafkaPartitions {
		t.Fatalf("topic has %d partitions, want %d", len(parts), KafkaPartitions)
	}
	seen := 0
	for _, p := range parts {
		r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: []string{k.Addr()}, Topic: "t", Partition: p.ID, MaxWait: 50 * time.Millisecond})
		pc, err := kafkago.DialLeader(ctx, "tcp", k.Addr(), "t", p.ID)
		if err != nil {
			t.Fatal(err)
		}
		last, err := pc.ReadLastOffset()
		pc.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i := int64(0); i < last; i++ {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			seen++
			if string(m.Key) == "a" && string(m.Value) != "1" || string(m.Key) == "b" && string(m.Value) != "2" {
				t.Fatalf("read %s=%s", m.Key, m.Value)
			}
		}
		r.Close()
	}
	if seen != len(msgs) {
		t.Fatalf("read %d records, want %d", seen, len(msgs))
	}
}
