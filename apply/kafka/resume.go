package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	kafkago "github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"
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
	var all []*tail
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
			all = append(all, &tail{topic: topic, partition: p})
		}
	}
	if err := s.lastRecords(ctx, all); err != nil {
		return nil, err
	}
	tails := map[int]snapTail{}
	maxDone := 0
	for _, t := range all {
		if !t.ok {
			continue
		}
		topic, p := t.topic, t.partition
		for _, h := range t.headers {
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

// tail is a partition's last record, as far as Resume reads it.
type tail struct {
	topic     string
	partition int
	ok        bool
	headers   []kafkago.Header
}

// lastRecords reads the last record of each partition, through the sink's
// client (its connections then serve the stream): one ListOffsets
// request, then a fetch of each partition that has records, in parallel.
func (s *Sink) lastRecords(ctx context.Context, tails []*tail) error {
	if len(tails) == 0 {
		return nil
	}
	req := &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{}}
	for _, t := range tails {
		req.Topics[t.topic] = append(req.Topics[t.topic], kafkago.FirstOffsetOf(t.partition), kafkago.LastOffsetOf(t.partition))
	}
	offsets, err := s.client.ListOffsets(ctx, req)
	if err != nil {
		return fmt.Errorf("resume: list offsets: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, t := range tails {
		var po *kafkago.PartitionOffsets
		for i := range offsets.Topics[t.topic] {
			if offsets.Topics[t.topic][i].Partition == t.partition {
				po = &offsets.Topics[t.topic][i]
			}
		}
		switch {
		case po == nil:
			return fmt.Errorf("resume: %s partition %d: no offsets in the answer", t.topic, t.partition)
		case po.Error != nil:
			return fmt.Errorf("resume: %s partition %d: %w", t.topic, t.partition, po.Error)
		case po.LastOffset <= po.FirstOffset:
			continue
		}
		g.Go(func() error {
			if err := s.fetchLast(gctx, t, po.LastOffset); err != nil {
				return fmt.Errorf("resume: %s partition %d: %w", t.topic, t.partition, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// fetchLast reads the record before end (the partition's end offset).
func (s *Sink) fetchLast(ctx context.Context, t *tail, end int64) error {
	res, err := s.client.Fetch(ctx, &kafkago.FetchRequest{Topic: t.topic, Partition: t.partition, Offset: end - 1,
		MinBytes: 1, MaxBytes: 64 << 20, MaxWait: s.cfg.Timeout})
	if err == nil {
		err = res.Error
	}
	if err != nil {
		return err
	}
	// The answer may start at an earlier offset (a whole record batch):
	// the last record read is the partition's last.
	for {
		r, err := res.Records.ReadRecord()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if r.Offset >= end {
			break
		}
		t.ok = true
		t.headers = t.headers[:0]
		for _, h := range r.Headers {
			t.headers = append(t.headers, kafkago.Header{Key: h.Key, Value: append([]byte(nil), h.Value...)})
		}
	}
	if !t.ok {
		return fmt.Errorf("the fetch at offset %d returned no record", end-1)
	}
	return nil
}
