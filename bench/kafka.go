package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/testenv"
)

// kafkaRun is one measured delivery into the broker: records and seconds.
type kafkaRun struct {
	records int64
	secs    float64
}

func (k kafkaRun) rate() float64 { return float64(k.records) / k.secs }

// kafkaSection measures `promoted replicate --sink kafka://` into an
// in-process broker (kfake, over TCP) during the snapshot and during a
// backlog drain, against kcat -P producing the very same records (read
// back from the topics into a file) into the same broker, in the same run.
func (e *env) kafkaSection(ctx context.Context, r *Report, tenantScript, othersScript string, say func(string, ...any)) error {
	kcat, err := kcatPath()
	if err != nil {
		return err
	}
	k, err := testenv.StartKafka(ctx)
	if err != nil {
		return err
	}
	defer k.Close()
	dir, err := os.MkdirTemp("", "promoted-bench-kafka-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tenant, script, err := e.kafkaTenant(ctx, dir, tenantScript, say)
	if err != nil {
		return err
	}
	cancel := func() { execCommand(e.bin, "cancel", "--source", e.srcMover, "--tenant", tenant).Run() }
	var snap, snapKcat, drain, steady, drainKcat []kafkaRun
	var rss int64
	for i := 0; i < e.size.Repeats; i++ {
		prefix := fmt.Sprintf("bench%d", i)
		args := []string{"replicate", "--source", e.srcMover, "--sink", "kafka://" + k.Addr() + "/" + prefix, "--tenant", tenant,
			"--tables", strings.Join(benchTables, ","), "--status-interval", "100ms"}
		d, err := startDaemon(ctx, e.bin, args...)
		if err != nil {
			return err
		}
		line, err := d.waitLine(ctx, "snapshot written", 30*time.Minute)
		if err == nil {
			_, err = d.waitLine(ctx, "streaming", 10*time.Minute)
		}
		rss = max(rss, d.peakRSS("snapshot"), d.hwm())
		d.stop()
		if err != nil {
			cancel()
			return err
		}
		topics := make([]string, len(benchTables))
		for j, t := range benchTables {
			topics[j] = prefix + ".public." + t
		}
		ends, err := endOffsets(ctx, k.Addr(), topics)
		if err != nil {
			cancel()
			return err
		}
		var n int64
		for _, v := range ends {
			n += v
		}
		s := kafkaRun{records: n, secs: num(line, "seconds")}
		snap = append(snap, s)
		kc, err := kcatProduce(ctx, kcat, k.Addr(), topics, nil, filepath.Join(dir, prefix+".snapshot"), prefix+".kcat.snapshot")
		if err != nil {
			cancel()
			return err
		}
		snapKcat = append(snapKcat, kc)
		// The backlog: the replica stopped, the tenant and the others
		// write, the replica restarts and delivers it.
		if _, _, _, err := e.backlog(ctx, script, othersScript); err != nil {
			cancel()
			return err
		}
		end, err := currentLSN(ctx, e.srcMover)
		if err != nil {
			cancel()
			return err
		}
		start := time.Now()
		d, err = startDaemon(ctx, e.bin, args...)
		if err != nil {
			cancel()
			return err
		}
		var streaming time.Time
		if _, err = d.waitLine(ctx, "streaming", 10*time.Minute); err == nil {
			streaming = time.Now()
			err = e.waitSlot(ctx, "promoted_", end, 30*time.Minute)
		}
		secs := time.Since(start).Seconds()
		steady = append(steady, kafkaRun{secs: time.Since(streaming).Seconds()})
		rss = max(rss, d.peakRSS("catchup"), d.hwm())
		d.stop()
		cancel()
		if err != nil {
			return err
		}
		after, err := endOffsets(ctx, k.Addr(), topics)
		if err != nil {
			return err
		}
		var m int64
		for key, v := range after {
			m += v - ends[key]
		}
		drain = append(drain, kafkaRun{records: m, secs: secs})
		steady[i].records = m
		// kcat appends the drain to the topic that holds its snapshot, as
		// promoted appends to topics holding its own: the in-process
		// broker grows a partition's memory by doubling and copying it,
		// so a fresh topic would spare the baseline a cost a full one
		// pays (a real broker's segment files have no such cost).
		kd, err := kcatProduce(ctx, kcat, k.Addr(), topics, ends, filepath.Join(dir, prefix+".drain"), prefix+".kcat.snapshot")
		if err != nil {
			return err
		}
		drainKcat = append(drainKcat, kd)
		say("   run %d: snapshot %d records at %.0f/s (kcat -P %.0f/s); drain %d records at %.0f/s (kcat -P %.0f/s)",
			i+1, s.records, s.rate(), kc.rate(), m, drain[i].rate(), kd.rate())
		// The in-process broker keeps every record in memory: drop this
		// run's topics before the next.
		drop := append(topics, prefix+".kcat.snapshot")
		client := &kafkago.Client{Addr: kafkago.TCP(k.Addr())}
		if _, err := client.DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: drop}); err != nil {
			return fmt.Errorf("delete the run's topics: %w", err)
		}
		os.Remove(filepath.Join(dir, prefix+".snapshot"))
		os.Remove(filepath.Join(dir, prefix+".drain"))
	}
	rate := func(rs []kafkaRun) float64 { return median(mapf(rs, kafkaRun.rate)) }
	r.add("kafka: snapshot into the broker", "records/s", rate(snap), rate(snapKcat), "kcat -P, the same records", 0.7, false)
	r.add("kafka: backlog drain into the broker", "records/s", rate(drain), rate(drainKcat), "kcat -P, the same records", 0.7, false)
	r.info("kafka: backlog drain, from the stream's start (no process start, plan, resume)", "records/s", rate(steady), rate(drainKcat), "kcat -P, the same records")
	r.limit("peak RSS, replica into Kafka", "MB", float64(rss)/1e6, 200)
	return nil
}

// kcatPath finds kcat (Debian's kafkacat package installs both names).
func kcatPath() (string, error) {
	for _, name := range []string{"kcat", "kafkacat"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("kcat is not installed: apt-get install -y kafkacat (the Kafka baseline produces with it)")
}

// waitSlot waits until the slot whose name starts with prefix has
// confirmed lsn: the replica acknowledges only what the broker acknowledged.
func (e *env) waitSlot(ctx context.Context, prefix string, lsn promoted.LSN, timeout time.Duration) error {
	return poll(ctx, e.srcMover, timeout, func(conn *pgx.Conn) (bool, error) {
		var s *string
		if err := conn.QueryRow(ctx, "SELECT max(confirmed_flush_lsn)::text FROM pg_replication_slots WHERE slot_name LIKE $1", prefix+"%").Scan(&s); err != nil || s == nil {
			return false, err
		}
		l, err := promoted.ParseLSN(*s)
		return err == nil && l >= lsn, err
	}, fmt.Sprintf("the replica did not deliver up to %s within %s", lsn, timeout))
}

// endOffsets is each partition's end offset, by "topic/partition".
func endOffsets(ctx context.Context, addr string, topics []string) (map[string]int64, error) {
	out := map[string]int64{}
	for _, t := range topics {
		for p := 0; p < testenv.KafkaPartitions; p++ {
			conn, err := kafkago.DialLeader(ctx, "tcp", addr, t, p)
			if err != nil {
				return nil, err
			}
			last, err := conn.ReadLastOffset()
			conn.Close()
			if err != nil {
				return nil, err
			}
			out[fmt.Sprintf("%s/%d", t, p)] = last
		}
	}
	return out, nil
}

// kcatProduce writes the topics' records from the offsets from (nil: the
// start) to a file, one "key<TAB>value" line each, and times kcat -P
// producing the file into a new topic of the broker with acks=all, as a
// user would replay them. Tombstones (no value) are left out.
func kcatProduce(ctx context.Context, kcat, addr string, topics []string, from map[string]int64, path, topic string) (kafkaRun, error) {
	f, err := os.Create(path)
	if err != nil {
		return kafkaRun{}, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var n int64
	for _, t := range topics {
		for p := 0; p < testenv.KafkaPartitions; p++ {
			c, err := readFrom(ctx, addr, t, p, from[fmt.Sprintf("%s/%d", t, p)], func(m kafkago.Message) {
				if m.Value == nil {
					return
				}
				w.Write(m.Key)
				w.WriteByte('\t')
				w.Write(m.Value)
				w.WriteByte('\n')
			})
			if err != nil {
				f.Close()
				return kafkaRun{}, err
			}
			n += c
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return kafkaRun{}, err
	}
	f.Close()
	argv := onCPUs(targetCPUs, kcat, "-P", "-b", addr, "-t", topic, "-K", "\t", "-X", "acks=all", "-l", path)
	start := time.Now()
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return kafkaRun{}, fmt.Errorf("kcat -P: %v: %s", err, out)
	}
	return kafkaRun{records: n, secs: time.Since(start).Seconds()}, nil
}

// readFrom reads a partition from offset to its current end.
func readFrom(ctx context.Context, addr, topic string, p int, offset int64, each func(kafkago.Message)) (int64, error) {
	conn, err := kafkago.DialLeader(ctx, "tcp", addr, topic, p)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	last, err := conn.ReadLastOffset()
	if err != nil || last <= offset {
		return 0, err
	}
	var n int64
	for offset < last {
		if _, err := conn.Seek(offset, kafkago.SeekAbsolute); err != nil {
			return n, err
		}
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		b := conn.ReadBatch(1, 16<<20)
		for {
			m, err := b.ReadMessage()
			if err != nil {
				break
			}
			each(m)
			if m.Value != nil {
				n++
			}
			offset = m.Offset + 1
		}
		if err := b.Close(); err != nil && !errors.Is(err, io.EOF) {
			return n, err
		}
	}
	return n, nil
}

// kafkaTenant is the tenant the Kafka section replicates, and its pgbench
// script: tenant 1, or, at a size with KafkaOrders, a tenant of that many
// orders added to the pooled database first.
func (e *env) kafkaTenant(ctx context.Context, dir, tenantScript string, say func(string, ...any)) (string, string, error) {
	if e.size.KafkaOrders == 0 {
		return "1", tenantScript, nil
	}
	t := e.size.Tenants + 1
	customers := max(e.size.KafkaOrders/10, 1)
	say("   replicating tenant %d: %d customers, %d orders and %d lines added to the pooled database (the in-process broker keeps every record in memory, and tenant 1's would not fit)",
		t, customers, e.size.KafkaOrders, 3*e.size.KafkaOrders)
	conn, err := pgx.Connect(ctx, e.pooled.Owner)
	if err != nil {
		return "", "", err
	}
	defer conn.Close(context.Background())
	if err := seedTenant(ctx, conn, e.size, t, customers, e.size.KafkaOrders); err != nil {
		return "", "", err
	}
	// New orders take ids past the added tenant's.
	if _, err := conn.Exec(ctx, "SELECT setval('orders_id_seq', (SELECT max(id) FROM orders)); ANALYZE customers, orders, order_lines"); err != nil {
		return "", "", err
	}
	script := filepath.Join(dir, "kafka-tenant.sql")
	if err := os.WriteFile(script, []byte(e.scriptOf(fmt.Sprint(t), customers, e.size.KafkaOrders)), 0o644); err != nil {
		return "", "", err
	}
	return fmt.Sprint(t), script, nil
}
