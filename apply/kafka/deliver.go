package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
)

// Delivery. Records go to their partition by murmur2 of the key, as
// Kafka's Java producer's default partitioner does, so a consumer of a
// Debezium topic finds each key where it expects it. Each partition's
// records are written in order, one produce request at a time, and a
// partition's writing stops at its first failed request: a partition then
// holds a prefix of its records, never a record after a missing one, which
// is what lets Resume read only the last record of each partition
// (flight.go).

// positionHeader carries a record's position (commit LSN, change LSN,
// order within the change), for Resume.
const positionHeader = "promoted.position"

// Position orders the records of the stream: the transaction's commit LSN
// (Begin.FinalLSN), the change's own LSN, and the record's order within
// the change (delete 0, tombstone 1, create 2 for a key change).
type Position struct {
	Commit promoted.LSN
	LSN    promoted.LSN
	Sub    int
}

// Less orders positions.
func (p Position) Less(q Position) bool {
	if p.Commit != q.Commit {
		return p.Commit < q.Commit
	}
	if p.LSN != q.LSN {
		return p.LSN < q.LSN
	}
	return p.Sub < q.Sub
}

// String is the position as its record header carries it:
// "commit/lsn/sub" in decimal.
func (p Position) String() string { return string(p.append(nil)) }

func (p Position) append(b []byte) []byte {
	b = strconv.AppendUint(b, uint64(p.Commit), 10)
	b = append(b, '/')
	b = strconv.AppendUint(b, uint64(p.LSN), 10)
	b = append(b, '/')
	return strconv.AppendInt(b, int64(p.Sub), 10)
}

func parsePosition(s string) (Position, error) {
	var p Position
	var c, l uint64
	if _, err := fmt.Sscanf(s, "%d/%d/%d", &c, &l, &p.Sub); err != nil {
		return p, fmt.Errorf("position header %q: %w", s, err)
	}
	p.Commit, p.LSN = promoted.LSN(c), promoted.LSN(l)
	return p, nil
}

// murmur2 is Kafka's Utils.murmur2 (the Java client's default
// partitioner hashes keys with it).
func murmur2(data []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	n := len(data)
	h := seed ^ uint32(n)
	for i := 0; i+4 <= n; i += 4 {
		k := binary.LittleEndian.Uint32(data[i:])
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := n &^ 3
	switch n % 4 {
	case 3:
		h ^= uint32(data[tail+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[tail+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[tail])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// PartitionFor is the partition Kafka's default partitioner picks for a
// key: toPositive(murmur2(key)) % partitions.
func PartitionFor(key []byte, partitions int) int {
	return int(murmur2(key)&0x7fffffff) % partitions
}

// record is one record for add: its value is head (a table's schema
// part, or nil) then value; a nil value is a tombstone.
type record struct {
	topic string
	// partition -1 sends the record to partition 0 (heartbeats); else the
	// key chooses.
	partition   int
	key         []byte
	head, value []byte
	headers     []kafkago.Header
}

// add places a record in its partition and encodes it into the current
// batch, unless Resume found it already delivered. The record's bytes are
// copied: the caller may reuse them.
func (s *Sink) add(ctx context.Context, r *record, pos *Position) error {
	n, err := s.partitionCount(ctx, r.topic)
	if err != nil {
		return err
	}
	p := 0
	if r.partition >= 0 {
		p = PartitionFor(r.key, n)
	}
	hs := append(s.hdrs[:0], r.headers...)
	if pos != nil {
		if d, ok := s.delivered[r.topic][p]; ok && !d.Less(*pos) {
			return nil
		}
		s.posBuf = pos.append(s.posBuf[:0])
		hs = append(hs, kafkago.Header{Key: positionHeader, Value: s.posBuf})
	}
	s.hdrs = hs
	s.push(r.topic, p, r.key, r.head, r.value, hs)
	return nil
}

// push encodes a record at the end of its partition's last record set,
// or of a new one when it would pass --kafka-batch-bytes or the record
// limit.
func (s *Sink) push(topic string, partition int, key, head, value []byte, headers []kafkago.Header) {
	b := s.cur
	k := partKey{topic, partition}
	pr := b.byPart[k]
	if pr == nil {
		pr = &partRecs{topic: topic, partition: partition}
		b.byPart[k] = pr
		b.parts = append(b.parts, pr)
	}
	tomb := value == nil
	var rs *recordSet
	n := 0
	if len(pr.sets) > 0 {
		rs = pr.sets[len(pr.sets)-1]
		n = recordLen(rs.count, key, head, value, tomb, headers)
		if len(rs.buf)-setSize+varintLen(int64(n))+n > s.cfg.BatchBytes || rs.count >= s.cfg.BatchRecords {
			rs = nil
		}
	}
	if rs == nil {
		rs = newSet(s.pool.get(), b.n)
		pr.sets = append(pr.sets, rs)
		n = recordLen(0, key, head, value, tomb, headers)
	}
	if need := varintLen(int64(n)) + n; cap(rs.buf)-len(rs.buf) < need {
		// Grow by doubling, but to no more than a full set needs.
		c := max(2*cap(rs.buf), len(rs.buf)+need)
		if full := setSize + s.cfg.BatchBytes; c > full {
			c = max(full, len(rs.buf)+need)
		}
		rs.buf = append(make([]byte, 0, c), rs.buf...)
	}
	before := len(rs.buf)
	rs.append(n, key, head, value, tomb, headers)
	b.n++
	b.bytes += len(rs.buf) - before
}

// partitionCount returns a topic's partition count, creating the topic
// (with --kafka-partitions) when it does not exist.
func (s *Sink) partitionCount(ctx context.Context, topic string) (int, error) {
	if n, ok := s.partitions[topic]; ok {
		return n, nil
	}
	n, err := s.readPartitions(ctx, topic)
	if err == nil && n == 0 {
		_, cerr := s.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{{
			Topic: topic, NumPartitions: s.cfg.Partitions, ReplicationFactor: s.cfg.ReplicationFactor}}})
		if cerr != nil {
			return 0, fmt.Errorf("create topic %s: %w", topic, cerr)
		}
		deadline := time.Now().Add(s.cfg.Timeout)
		for n == 0 && err == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			n, err = s.readPartitions(ctx, topic)
		}
		if err == nil && n == 0 {
			err = errors.New("it has no partitions after creation")
		}
	}
	if err != nil {
		return 0, fmt.Errorf("topic %s: %w", topic, err)
	}
	s.partitions[topic] = n
	return n, nil
}

// readPartitions returns a topic's partition count, 0 if it does not
// exist.
func (s *Sink) readPartitions(ctx context.Context, topic string) (int, error) {
	md, err := s.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return 0, err
	}
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			if errors.Is(t.Error, kafkago.UnknownTopicOrPartition) {
				return 0, nil
			}
			return 0, t.Error
		}
		return len(t.Partitions), nil
	}
	return 0, nil
}
