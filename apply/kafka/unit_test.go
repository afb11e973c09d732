package kafka

import (
	"context"
	"hash/crc32"
	"math"
	"math/big"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted/testenv"
)

// javaMurmur2 is Kafka's Utils.murmur2 transcribed from the Java client
// (org.apache.kafka.common.utils.Utils), with Java's signed ints and >>>.
func javaMurmur2(data []byte) int32 {
	length := int32(len(data))
	seed := int32(-1756908916) // 0x9747b28c
	const m = int32(0x5bd1e995)
	const r = 24
	h := seed ^ length
	length4 := length / 4
	for i := int32(0); i < length4; i++ {
		i4 := i * 4
		k := int32(data[i4+0]&0xff) + int32(data[i4+1]&0xff)<<8 + int32(data[i4+2]&0xff)<<16 + int32(data[i4+3]&0xff)<<24
		k *= m
		k ^= int32(uint32(k) >> r)
		k *= m
		h *= m
		h ^= k
	}
	switch length % 4 {
	case 3:
		h ^= int32(data[(length&^3)+2]&0xff) << 16
		fallthrough
	case 2:
		h ^= int32(data[(length&^3)+1]&0xff) << 8
		fallthrough
	case 1:
		h ^= int32(data[length&^3] & 0xff)
		h *= m
	}
	h ^= int32(uint32(h) >> 13)
	h *= m
	h ^= int32(uint32(h) >> 15)
	return h
}

// javaPartition is the Java producer's default partition of a keyed
// record: Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions.
func javaPartition(key []byte, n int) int {
	return int(javaMurmur2(key)&0x7fffffff) % n
}

// TestKafkaMurmur2MatchesJava checks the partitioner against Kafka's own
// test vectors (UtilsTest.testMurmur2), the Java transcription, kafka-go's
// Murmur2Balancer, and the partitions records actually landed in.
func TestKafkaMurmur2MatchesJava(t *testing.T) {
	vectors := map[string]int32{
		"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
		"a-little-bit-longer-string": -1486304829, "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107,
	}
	for in, want := range vectors {
		if got := javaMurmur2([]byte(in)); got != want {
			t.Fatalf("the Java transcription gives %d for %q, Kafka's test says %d", got, in, want)
		}
		if got := int32(murmur2([]byte(in))); got != want {
			t.Fatalf("murmur2(%q) = %d, want %d", in, got, want)
		}
	}
	keys := []string{"", "a", `{"tenant_id":7,"id":1}`, `{"schema":{"type":"struct"},"payload":{"id":42}}`, strings.Repeat("x", 1001)}
	for i := 0; i < 200; i++ {
		keys = append(keys, `{"tenant_id":7,"id":`+string(rune('0'+i%10))+strings.Repeat("9", i%13)+`}`)
	}
	for _, k := range keys {
		for _, n := range []int{1, 3, 7, 12} {
			want := javaPartition([]byte(k), n)
			if got := PartitionFor([]byte(k), n); got != want {
				t.Fatalf("PartitionFor(%q, %d) = %d, Java's is %d", k, n, got, want)
			}
			parts := make([]int, n)
			for i := range parts {
				parts[i] = i
			}
			if got := (kafkago.Murmur2Balancer{}).Balance(kafkago.Message{Key: []byte(k)}, parts...); got != want {
				t.Fatalf("kafka-go's Murmur2Balancer puts %q in %d of %d, Java in %d", k, got, n, want)
			}
		}
	}

	// Records written by the sink sit where Java would have put them.
	src := newSource(t, `CREATE TABLE other (tenant_id int NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id))`, "other")
	k := startKafka(t)
	ctx := context.Background()
	s := newSink(t, Config{Brokers: []string{k.Addr()}, Prefix: "mm", Tombstones: true}, src)
	for _, txn := range synthTxns(src.tables[0], 10) {
		if err := s.Apply(ctx, &txn); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for p := 0; p < testenv.KafkaPartitions; p++ {
		conn, err := kafkago.DialLeader(ctx, "tcp", k.Addr(), "mm.public.other", p)
		if err != nil {
			t.Fatal(err)
		}
		first, end, _ := conn.ReadOffsets()
		conn.Seek(first, kafkago.SeekAbsolute)
		for off := first; off < end; off++ {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			m, err := conn.ReadMessage(1 << 20)
			if err != nil {
				t.Fatal(err)
			}
			if want := javaPartition(m.Key, testenv.KafkaPartitions); want != p {
				t.Fatalf("record with key %s is in partition %d, Java's partitioner says %d", m.Key, p, want)
			}
			seen++
		}
		conn.Close()
	}
	if seen == 0 {
		t.Fatal("no records read")
	}
}

// TestKafkaKcatReadsTheTopic consumes a topic the sink wrote with kcat, a
// librdkafka client, as an operator would.
func TestKafkaKcatReadsTheTopic(t *testing.T) {
	bin, err := exec.LookPath("kcat")
	if err != nil {
		if bin, err = exec.LookPath("kafkacat"); err != nil {
			t.Fatal("kcat is not installed: install it with `apt-get install -y kafkacat` (Debian's package provides both kcat and kafkacat)")
		}
	}
	src := newSource(t, `CREATE TABLE other (tenant_id int NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id))`, "other")
	k := startKafka(t)
	ctx := context.Background()
	s := newSink(t, Config{Brokers: []string{k.Addr()}, Prefix: "kc", Tombstones: true}, src)
	txns := synthTxns(src.tables[0], 6)
	for i := range txns {
		if err := s.Apply(ctx, &txns[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, bin, "-b", k.Addr(), "-C", "-t", "kc.public.other", "-e", "-o", "beginning", "-q",
		"-f", "%p %k %s\n", "-Z").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", bin, err, out)
	}
	text := string(out)
	for i := 1; i <= 18; i++ {
		note := `"note":"note ` + itoa(i) + `"`
		if !strings.Contains(text, note) {
			t.Fatalf("kcat did not see the row with %s:\n%s", note, text)
		}
	}
	if got := strings.Count(text, "\n"); got != 18+2 {
		t.Fatalf("kcat printed %d records, want 18 creates, 1 delete and 1 tombstone:\n%s", got, text)
	}
	if !strings.Contains(text, `"op":"d"`) || !strings.Contains(text, " NULL\n") {
		t.Fatalf("kcat output lacks the delete or its tombstone (printed as NULL with -Z):\n%s", text)
	}
}

func itoa(i int) string { return big.NewInt(int64(i)).String() }

// TestKafkaJavaFormatting pins the Java renderings the records depend on.
func TestKafkaJavaFormatting(t *testing.T) {
	doubles := map[float64]string{
		4.44: "4.44", 100: "100.0", 1e7: "1.0E7", 1234567: "1234567.0", 0.001: "0.001", 0.0001: "1.0E-4",
		1e-5: "1.0E-5", 1.0e23: "1.0E23", math.MaxFloat64: "1.7976931348623157E308", 4.9e-324: "4.9E-324",
		-2.5: "-2.5", 22.2222: "22.2222", math.Copysign(0, -1): "-0.0", 0: "0.0",
	}
	for f, want := range doubles {
		if got := javaFloatString(f, 64); got != want {
			t.Errorf("Double.toString(%v) = %s, want %s", f, got, want)
		}
	}
	floats := map[float32]string{3.3: "3.3", 1.1: "1.1", 3: "3.0", 1e10: "1.0E10", 0.1: "0.1"}
	for f, want := range floats {
		if got := javaFloatString(float64(f), 32); got != want {
			t.Errorf("Float.toString(%v) = %s, want %s", f, got, want)
		}
	}
	bigs := []struct {
		neg    bool
		digits string
		scale  int
		want   string
	}{{false, "110", 2, "1.10"}, {true, "5", 3, "-0.005"}, {false, "0", 2, "0.00"}, {false, "1", 7, "1E-7"}, {false, "123", 0, "123"}, {false, "12", 9, "1.2E-8"}}
	for _, b := range bigs {
		if got := javaBigDecimalString(b.neg, b.digits, b.scale); got != b.want {
			t.Errorf("BigDecimal(%v %s scale %d).toString() = %s, want %s", b.neg, b.digits, b.scale, got, b.want)
		}
	}
	for v, want := range map[int64][]byte{0: {0}, 127: {0x7f}, 128: {0, 0x80}, -1: {0xff}, -128: {0x80}, -129: {0xff, 0x7f}, 222: {0, 0xde}} {
		if got := javaBigIntegerBytes(big.NewInt(v)); string(got) != string(want) {
			t.Errorf("BigInteger(%d).toByteArray() = %x, want %x", v, got, want)
		}
	}
	if h := javaStringHash("abc"); h != 96354 {
		t.Errorf(`"abc".hashCode() = %d, want 96354`, h)
	}
	if got := javaHashMapOrder([]string{"b", "a", "q"}); strings.Join(got, ",") != "a,q,b" {
		// "a" 97 -> bucket 1, "b" 98 -> 2, "q" 113 -> 1 (inserted after a).
		t.Errorf("HashMap order %v, want a,q,b", got)
	}
	if got := nameUUIDFromBytes([]byte(Placeholder)); len(got) != 36 || got[14] != '3' {
		t.Errorf("nameUUIDFromBytes = %s, not a version 3 UUID", got)
	}
	for _, d := range [][3]int64{{1970, 1, 1}, {2016, 11, 4}, {0, 3, 1}, {-43, 3, 15}, {-4713, 11, 24}, {294276, 12, 31}, {-5877611, 6, 21}} {
		days := epochDays(d[0], d[1], d[2])
		y, m, dd := fromEpochDays(days)
		if y != d[0] || m != d[1] || dd != d[2] {
			t.Errorf("%v -> %d days -> %d-%d-%d", d, days, y, m, dd)
		}
	}
	if epochDays(2016, 11, 4) != 17109 || epochDays(0, 3, 1) != -719468 {
		t.Error("epochDays is off")
	}
}

// TestKafkaShortDecimal checks that the int64 path for precise decimals
// writes what the big.Int path writes, and leaves what it cannot do to it.
func TestKafkaShortDecimal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	texts := []string{"-10.50", "0", "-0", "0.00", "-0.00", "1", "-1", "127", "128", "-128", "-129", "1.5", "10.50", "999999999999999999",
		"-999999999999999999", "9999999999999999999", "0.000000000000000001", "123456789012345678.9", ".5", "5.", "00012.3400",
		"1e5", "--1", "1.2.3", "", "-", ".", "NaN", "Infinity", "12345678901234567890123", "9223372036854775807", "-9223372036854775808"}
	for i := 0; i < 2000; i++ {
		var sb strings.Builder
		if rng.IntN(2) == 0 {
			sb.WriteByte('-')
		}
		for n := rng.IntN(20); n >= 0; n-- {
			sb.WriteByte(byte('0' + rng.IntN(10)))
		}
		if rng.IntN(3) > 0 {
			sb.WriteByte('.')
			for n := rng.IntN(8); n > 0; n-- {
				sb.WriteByte(byte('0' + rng.IntN(10)))
			}
		}
		texts = append(texts, sb.String())
	}
	for _, c := range []*codec{{conv: convVarDecimal}, {conv: convDecimal, scale: 0}, {conv: convDecimal, scale: 2}, {conv: convDecimal, scale: 7}} {
		for _, text := range texts {
			fast, ok := c.appendShortDecimal(nil, []byte(text))
			slow, err := c.appendTemporalOrNumeric(nil, text)
			if ok && (err != nil || string(fast) != string(slow)) {
				t.Errorf("conv %d scale %d %q: short %s, big %s (%v)", c.conv, c.scale, text, fast, slow, err)
			}
			if !ok && text == "-10.50" && (c.conv == convVarDecimal || c.scale >= 2) {
				t.Errorf("conv %d scale %d %q: the int64 path refused it", c.conv, c.scale, text)
			}
		}
	}
}

// TestKafkaCRCCombine checks the CRC-32C of a record set assembled from
// its parts against the CRC of the whole.
func TestKafkaCRCCombine(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tab := crc32.MakeTable(crc32.Castagnoli)
	for _, n := range []int{0, 1, 7, 40, 61, 1000, 65536, 1 << 20} {
		data := make([]byte, n+40)
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		for _, cut := range []int{0, 1, 40, len(data)} {
			a, b := data[:cut], data[cut:]
			got := crc32Combine(crc32.Checksum(a, tab), crc32.Checksum(b, tab), len(b))
			if want := crc32.Checksum(data, tab); got != want {
				t.Errorf("%d bytes cut at %d: combined %08x, want %08x", len(data), cut, got, want)
			}
		}
	}
}

// TestKafkaConfig checks the --sink URL and the flags' validation.
func TestKafkaConfig(t *testing.T) {
	brokers, prefix, err := ParseSinkURL("kafka://k1:9092,k2/dbserver1")
	if err != nil || strings.Join(brokers, ",") != "k1:9092,k2:9092" || prefix != "dbserver1" {
		t.Fatalf("ParseSinkURL: %v %v %v", brokers, prefix, err)
	}
	for _, bad := range []string{"postgres://x/y", "kafka://host:9092", "kafka:///p", "kafka://h/bad prefix"} {
		if _, _, err := ParseSinkURL(bad); err == nil {
			t.Errorf("ParseSinkURL(%q) accepted", bad)
		}
	}
	c := Config{Brokers: brokers, Prefix: prefix, DecimalHandling: "exact"}
	if err := c.Validate(); err == nil {
		t.Error("Validate accepted --decimal-handling exact")
	}
	c.DecimalHandling = ""
	if err := c.Validate(); err != nil || c.DecimalHandling != DecimalPrecise || c.BatchBytes != 1<<20 {
		t.Errorf("Validate: %v %+v", err, c)
	}
	if topicName("p", "sch ema", "tä") != "p.sch_ema.t_" {
		t.Errorf("topicName = %s", topicName("p", "sch ema", "tä"))
	}
	if got, _ := parseArray(`[0:1]={"a,b",NULL}`); len(got) != 2 || *got[0] != "a,b" || got[1] != nil {
		t.Errorf("parseArray with bounds: %v", got)
	}
	if _, err := parseArray(`{{1,2},{3,4}}`); err == nil {
		t.Error("parseArray accepted two dimensions")
	}
}
