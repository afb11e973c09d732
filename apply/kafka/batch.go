package kafka

import (
	"encoding/binary"
	"hash/crc32"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
)

// The sink encodes records straight into Kafka's wire format (record
// batch v2, uncompressed, as kafka-go's writer would send them; brokers
// since 0.11 take it) and hands each partition's record sets to kafka-go
// as raw produce requests. Going
// through kafka-go's Message and writer cost an allocation per record, a
// per-record reflective encoding and a copy of every value (whose schema
// part is most of its bytes), which made encoding and its garbage half of
// the sink's time. Here a record's bytes are copied once, from a scratch
// buffer (or the table's precomputed schema) into a reused set buffer.

// batch is the records encoded since the last handoff: for each partition
// the record sets (one produce request each) in order, and the source
// transactions they complete.
type batch struct {
	parts  []*partRecs
	byPart map[partKey]*partRecs
	// n counts the records; bytes their encoded size.
	n, bytes int
	marks    []mark
	// snapLast is, by table index, the last snapshot row in the batch;
	// snapDone how many tables are wholly written once it is acknowledged.
	snapLast []promoted.Row
	snapDone int

	// mu guards the acknowledgement state, which the partitions' senders
	// update while the batch is in flight.
	mu      sync.Mutex
	settled int // marks already made durable
}

func newBatch() *batch { return &batch{byPart: map[partKey]*partRecs{}} }

// mark says that once the batch's first upto records are acknowledged,
// the transaction ending at end is durable.
type mark struct {
	end  promoted.LSN
	upto int
}

type partKey struct {
	topic     string
	partition int
}

// partRecs is one partition's record sets in a batch.
type partRecs struct {
	topic     string
	partition int
	sets      []*recordSet
	acked     int // sets acknowledged (batch.mu)
}

// recordSet is one produce request's records: a 4-byte size, the v2
// batch header, then the records. finish fills in the header.
type recordSet struct {
	buf   []byte
	count int
	first int // the batch-wide index of its first record
	kv    int // key and value bytes, for the metrics
	// crc is the CRC-32C of the records so far, computed as each is
	// appended (while its bytes are in the cache) and combined with the
	// header's by finish.
	crc uint32
}

// Record batch v2 header offsets, after the 4-byte size of the set.
const (
	setSize        = 4
	batchHeaderLen = 61
	offLength      = setSize + 8
	offCRC         = setSize + 17
	offAttributes  = setSize + 21
	offLastDelta   = setSize + 23
	offFirstTS     = setSize + 27
	offMaxTS       = setSize + 35
	offCount       = setSize + 57
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// newSet starts a record set in buf (a recycled buffer or nil).
func newSet(buf []byte, first int) *recordSet {
	if buf == nil {
		buf = make([]byte, 0, 64<<10)
	}
	buf = append(buf[:0], make([]byte, setSize+batchHeaderLen)...)
	binary.BigEndian.PutUint32(buf[setSize+12:], 0xffffffff) // partition leader epoch -1
	buf[setSize+16] = 2                                      // magic
	binary.BigEndian.PutUint64(buf[setSize+43:], ^uint64(0)) // producer id -1
	binary.BigEndian.PutUint16(buf[setSize+51:], 0xffff)     // producer epoch -1
	binary.BigEndian.PutUint32(buf[setSize+53:], 0xffffffff) // base sequence -1
	return &recordSet{buf: buf, first: first}
}

// recordLen is the encoded length of a record's body (after its length
// varint). A nil value with tomb set is a tombstone (null value).
func recordLen(offsetDelta int, key, head, value []byte, tomb bool, headers []kafkago.Header) int {
	n := 1 + 1 + varintLen(int64(offsetDelta)) // attributes, timestamp delta 0, offset delta
	n += varintLen(int64(len(key))) + len(key)
	if tomb {
		n++
	} else {
		vl := len(head) + len(value)
		n += varintLen(int64(vl)) + vl
	}
	n += varintLen(int64(len(headers)))
	for _, h := range headers {
		n += varintLen(int64(len(h.Key))) + len(h.Key) + varintLen(int64(len(h.Value))) + len(h.Value)
	}
	return n
}

// append adds a record of body length n (recordLen).
func (rs *recordSet) append(n int, key, head, value []byte, tomb bool, headers []kafkago.Header) {
	start := len(rs.buf)
	b := binary.AppendVarint(rs.buf, int64(n))
	b = append(b, 0, 0) // attributes, timestamp delta
	b = binary.AppendVarint(b, int64(rs.count))
	b = binary.AppendVarint(b, int64(len(key)))
	b = append(b, key...)
	if tomb {
		b = binary.AppendVarint(b, -1)
	} else {
		b = binary.AppendVarint(b, int64(len(head)+len(value)))
		b = append(b, head...)
		b = append(b, value...)
		rs.kv += len(head) + len(value)
	}
	b = binary.AppendVarint(b, int64(len(headers)))
	for _, h := range headers {
		b = binary.AppendVarint(b, int64(len(h.Key)))
		b = append(b, h.Key...)
		b = binary.AppendVarint(b, int64(len(h.Value)))
		b = append(b, h.Value...)
	}
	rs.buf = b
	rs.count++
	rs.kv += len(key)
	rs.crc = crc32.Update(rs.crc, castagnoli, b[start:])
}

// finish completes the header: sizes, count, the timestamps (the time of
// sending, as kafka-go gives records without one) and the CRC.
func (rs *recordSet) finish(now time.Time) {
	b := rs.buf
	binary.BigEndian.PutUint32(b, uint32(len(b)-setSize))
	binary.BigEndian.PutUint32(b[offLength:], uint32(len(b)-offLength-4))
	binary.BigEndian.PutUint32(b[offLastDelta:], uint32(rs.count-1))
	ts := uint64(now.UnixMilli())
	binary.BigEndian.PutUint64(b[offFirstTS:], ts)
	binary.BigEndian.PutUint64(b[offMaxTS:], ts)
	binary.BigEndian.PutUint32(b[offCount:], uint32(rs.count))
	records := setSize + batchHeaderLen
	crc := crc32Combine(crc32.Checksum(b[offAttributes:records], castagnoli), rs.crc, len(b)-records)
	binary.BigEndian.PutUint32(b[offCRC:], crc)
}

// crc32Combine is zlib's crc32_combine for CRC-32C: the CRC of a
// sequence of bytes from the CRCs of its two parts and the length of the
// second (an operator for len2 zero bits, applied by repeated squaring).
func crc32Combine(crc1, crc2 uint32, len2 int) uint32 {
	if len2 <= 0 {
		return crc1
	}
	var even, odd [32]uint32
	odd[0] = castagnoliReversed
	row := uint32(1)
	for n := 1; n < 32; n++ {
		odd[n] = row
		row <<= 1
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four zero bits
	for {
		gf2Square(&even, &odd)
		if len2&1 != 0 {
			crc1 = gf2Times(&even, crc1)
		}
		if len2 >>= 1; len2 == 0 {
			break
		}
		gf2Square(&odd, &even)
		if len2&1 != 0 {
			crc1 = gf2Times(&odd, crc1)
		}
		if len2 >>= 1; len2 == 0 {
			break
		}
	}
	return crc1 ^ crc2
}

const castagnoliReversed = 0x82f63b78

func gf2Times(mat *[32]uint32, vec uint32) uint32 {
	var sum uint32
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2Square(square, mat *[32]uint32) {
	for n := range mat {
		square[n] = gf2Times(mat, mat[n])
	}
}

func varintLen(v int64) int {
	u := uint64(v<<1) ^ uint64(v>>63)
	n := 1
	for u >= 0x80 {
		u >>= 7
		n++
	}
	return n
}

// frontier is how many of the batch's first records are acknowledged in
// every partition: the smallest first record of a set not yet
// acknowledged. Call with mu held.
func (b *batch) frontier() int {
	f := b.n
	for _, p := range b.parts {
		if p.acked < len(p.sets) {
			f = min(f, p.sets[p.acked].first)
		}
	}
	return f
}

// settle makes durable the transactions whose records are all
// acknowledged. Call with mu held.
func (b *batch) settle(setDurable func(promoted.LSN)) {
	f := b.frontier()
	for b.settled < len(b.marks) && b.marks[b.settled].upto <= f {
		setDurable(b.marks[b.settled].end)
		b.settled++
	}
}

// pool keeps record set buffers for reuse, up to a total capacity.
type pool struct {
	mu    sync.Mutex
	free  [][]byte
	bytes int
	limit int
}

func (p *pool) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		p.bytes -= cap(b)
		return b
	}
	return nil
}

func (p *pool) put(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes+cap(b) <= p.limit {
		p.free = append(p.free, b[:0])
		p.bytes += cap(b)
	}
}
