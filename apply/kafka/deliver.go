package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
)

// Delivery. Records go to their partition by murmur2 of the key, as
// Kafka's Java producer's default partitioner does, so a consumer of a
// Debezium topic finds each key where it expects it. A flush writes the
// buffer in rounds of at most one produce request per partition and stops
// at the first failed round: a partition then holds a prefix of its
// records, never a record after a missing one, which is what lets Resume
// read only the last record of each partition.

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
func (p Position) String() string {
	return strconv.FormatUint(uint64(p.Commit), 10) + "/" + strconv.FormatUint(uint64(p.LSN), 10) + "/" + strconv.Itoa(p.Sub)
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

// assigned is the writer's balancer: the sink has already chosen each
// record's partition (murmur2 of the key, or 0 for heartbeats).
type assigned struct{}

// Balance returns the partition the sink chose, falling back to murmur2
// should the topic have fewer partitions than the sink saw.
func (assigned) Balance(msg kafkago.Message, partitions ...int) int {
	for _, p := range partitions {
		if p == msg.Partition {
			return p
		}
	}
	return partitions[int(murmur2(msg.Key)&0x7fffffff)%len(partitions)]
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
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
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

// add places a record in its partition and buffers it, unless Resume
// found it already delivered.
func (s *Sink) add(ctx context.Context, r record, pos *Position) error {
	n, err := s.partitionCount(ctx, r.topic)
	if err != nil {
		return err
	}
	if r.partition < 0 {
		r.partition = 0
	} else {
		r.partition = PartitionFor(r.key, n)
	}
	if pos != nil {
		if d, ok := s.delivered[r.topic][r.partition]; ok && !d.Less(*pos) {
			return nil
		}
		r.headers = append(r.headers, kafkago.Header{Key: positionHeader, Value: []byte(pos.String())})
	}
	r.size = recordSize(&r)
	s.buf = append(s.buf, r)
	s.bufBytes += r.size
	return nil
}

// recordSize bounds what kafka-go counts for a message (it must not be
// less, or kafka-go would split a round's batch in two).
func recordSize(r *record) int {
	n := 64 + len(r.key) + len(r.value)
	for _, h := range r.headers {
		n += 16 + len(h.Key) + len(h.Value)
	}
	return n
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

// Flush writes everything buffered and waits for the broker's acks=all.
// Durable then covers every whole transaction handed over so far.
func (s *Sink) Flush(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	if len(s.buf) == 0 {
		s.settle()
		return nil
	}
	start := time.Now()
	rounds := s.rounds()
	acked := 0 // records of buf acknowledged, as a count of rounds
	for i, round := range rounds {
		msgs := make([]kafkago.Message, len(round))
		bytes := 0
		for j, idx := range round {
			r := &s.buf[idx]
			msgs[j] = kafkago.Message{Topic: r.topic, Partition: r.partition, Key: r.key, Value: r.value, Headers: r.headers}
			bytes += len(r.key) + len(r.value)
		}
		if err := s.w.WriteMessages(ctx, msgs...); err != nil {
			s.settleRounds(acked)
			return s.fail(fmt.Errorf("write to Kafka: %w", err))
		}
		acked = i + 1
		s.m.records.Add(float64(len(msgs)))
		s.m.bytes.Add(float64(bytes))
		s.m.batches.Inc()
		s.settleRounds(acked)
	}
	s.buf, s.bufBytes = s.buf[:0], 0
	s.settle()
	s.m.flushSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// rounds splits the buffer into rounds: each holds, for each partition,
// the next run of its records that fits one produce request. roundOf
// records which round each buffered record is in.
func (s *Sink) rounds() [][]int {
	type tp struct {
		topic     string
		partition int
	}
	type cursor struct {
		round, bytes, count int
	}
	cur := map[tp]*cursor{}
	var rounds [][]int
	s.roundOf = s.roundOf[:0]
	for i := range s.buf {
		r := &s.buf[i]
		k := tp{r.topic, r.partition}
		c := cur[k]
		if c == nil {
			c = &cursor{}
			cur[k] = c
		}
		if c.count > 0 && (c.bytes+r.size > s.cfg.BatchBytes || c.count+1 > s.cfg.BatchRecords) {
			c.round, c.bytes, c.count = c.round+1, 0, 0
		}
		c.bytes += r.size
		c.count++
		for len(rounds) <= c.round {
			rounds = append(rounds, nil)
		}
		rounds[c.round] = append(rounds[c.round], i)
		s.roundOf = append(s.roundOf, c.round)
	}
	return rounds
}

// settleRounds advances Durable past every transaction whose records (and
// all records before them) are in the first n rounds.
func (s *Sink) settleRounds(n int) {
	maxRound := -1
	upto := 0
	for _, mk := range s.marks {
		for ; upto < mk.upto; upto++ {
			maxRound = max(maxRound, s.roundOf[upto])
		}
		if maxRound >= n {
			return
		}
		s.setDurable(mk.end)
	}
}

// settle marks durable every transaction handed over, once nothing is
// left in the buffer (after a whole flush, or when nothing was buffered).
func (s *Sink) settle() {
	if len(s.buf) > 0 {
		return
	}
	for _, mk := range s.marks {
		s.setDurable(mk.end)
	}
	s.marks = s.marks[:0]
}

func (s *Sink) setDurable(end promoted.LSN) {
	if uint64(end) > s.durable.Load() {
		s.durable.Store(uint64(end))
		s.m.durable.Set(float64(end))
	}
}
