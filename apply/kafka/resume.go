package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// Resumed is what the topics already hold when the sink starts again
// after a crash or a broken connection, read from the last record of each
// partition.
type Resumed struct {
	// Last is the highest position of any record delivered.
	Last Position
	// Delivered is each partition's last delivered position, by topic.
	Delivered map[string]map[int]Position
	// Streamed is set when change records exist: the snapshot finished
	// before streaming began.
	Streamed bool
	// Snapshot is each table's snapshot progress, by Table.String().
	Snapshot map[string]SnapshotProgress
}

// SnapshotProgress is how far a table's snapshot got.
type SnapshotProgress struct {
	// Complete is set when every row of the table was acknowledged.
	Complete bool
	// After is the primary key (PostgreSQL text, key order) of a row up to
	// which every row was acknowledged; nil: start the table over. Rows
	// after it may also have been delivered, in some partitions: a resumed
	// snapshot writes them again (a snapshot is an upsert per key).
	After []string
}

// Resume reads the last record of every partition of the sink's topics
// and remembers what they hold: Apply then skips every record at or
// before its partition's last delivered position, so replaying the
// stream from the slot's position adds no duplicate. Call it before the
// first Apply; it creates no topic.
func (s *Sink) Resume(ctx context.Context) (*Resumed, error) {
	res := &Resumed{Delivered: map[string]map[int]Position{}, Snapshot: map[string]SnapshotProgress{}}
	topics := make([]string, 0, len(s.order)+1)
	for _, te := range s.order {
		topics = append(topics, te.topic)
	}
	if s.cfg.TransactionMetadata {
		topics = append(topics, topicName(s.cfg.Prefix, "transaction"))
	}
	type snapTail struct {
		mark snapshotMark
		ok   bool
	}
	tails := map[int]snapTail{}
	maxDone := 0
	for _, topic := range topics {
		n, err := s.readPartitions(ctx, topic)
		if err != nil {
			return nil, fmt.Errorf("resume: topic %s: %w", topic, err)
		}
		if n == 0 {
			continue
		}
		s.partitions[topic] = n
		for p := 0; p < n; p++ {
			msg, ok, err := s.lastRecord(ctx, topic, p)
			if err != nil {
				return nil, fmt.Errorf("resume: %s partition %d: %w", topic, p, err)
			}
			if !ok {
				continue
			}
			for _, h := range msg.Headers {
				switch h.Key {
				case positionHeader:
					pos, err := parsePosition(string(h.Value))
					if err != nil {
						return nil, fmt.Errorf("resume: %s partition %d: %w", topic, p, err)
					}
					if res.Delivered[topic] == nil {
						res.Delivered[topic] = map[int]Position{}
					}
					res.Delivered[topic][p] = pos
					if res.Last.Less(pos) {
						res.Last = pos
					}
					res.Streamed = true
				case snapshotHeader:
					var m snapshotMark
					if err := json.Unmarshal(h.Value, &m); err != nil {
						return nil, fmt.Errorf("resume: %s partition %d: snapshot header: %w", topic, p, err)
					}
					maxDone = max(maxDone, m.Done)
					if t := tails[m.Table]; !t.ok || t.mark.Seq < m.Seq {
						tails[m.Table] = snapTail{m, true}
					}
				}
			}
		}
	}
	for _, te := range s.order {
		pr := SnapshotProgress{Complete: res.Streamed || te.index < maxDone}
		if t := tails[te.index]; !pr.Complete && t.ok {
			pr.After = t.mark.After
		}
		res.Snapshot[te.table.String()] = pr
	}
	s.delivered = res.Delivered
	return res, nil
}

// lastRecord reads a partition's last record, if it has any.
func (s *Sink) lastRecord(ctx context.Context, topic string, partition int) (kafkago.Message, bool, error) {
	var last error
	for _, b := range s.cfg.Brokers {
		conn, err := kafkago.DialLeader(ctx, "tcp", b, topic, partition)
		if err != nil {
			last = err
			continue
		}
		defer conn.Close()
		first, end, err := conn.ReadOffsets()
		if err != nil {
			return kafkago.Message{}, false, err
		}
		if end <= first {
			return kafkago.Message{}, false, nil
		}
		if _, err := conn.Seek(end-1, kafkago.SeekAbsolute); err != nil {
			return kafkago.Message{}, false, err
		}
		conn.SetReadDeadline(time.Now().Add(s.cfg.Timeout))
		msg, err := conn.ReadMessage(64 << 20)
		if err != nil {
			return kafkago.Message{}, false, err
		}
		return msg, true, nil
	}
	if last == nil {
		last = errors.New("no broker")
	}
	return kafkago.Message{}, false, last
}
