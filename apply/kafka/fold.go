package kafka

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/promoted/promoted"
)

// State is the tables' rows as a set of Debezium topics says they are:
// by table (Table.String()), by primary key (KeyText), the columns'
// PostgreSQL text (nil is NULL).
type State map[string]map[string]map[string]*string

// Fold reads every record of the tables' topics from the beginning to the
// current end and folds them into State the way a consumer applying them
// would: creates, updates and snapshot reads set the row (keeping a
// column's previous value where the record has Debezium's unavailable
// placeholder), deletes and tombstones remove it. Records of one key are
// in one partition, so partition order is the key's order. cfg must be
// the sink's (prefix, decimal handling, schemas) and types LoadTypes'.
func Fold(ctx context.Context, cfg Config, tables []*promoted.Table, types *Types) (State, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	state := State{}
	// A transport of its own: a shared one answers metadata from a cache
	// that may predate the topics.
	client := &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Timeout: cfg.Timeout, Transport: &kafkago.Transport{DialTimeout: cfg.Timeout}}
	for i, t := range tables {
		te, err := newTableEnc(&cfg, t, i, types, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, err
		}
		rows := map[string]map[string]*string{}
		state[t.String()] = rows
		md, err := client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{te.topic}})
		if err != nil {
			return nil, fmt.Errorf("fold %s: %w", te.topic, err)
		}
		for _, mt := range md.Topics {
			if mt.Name != te.topic || mt.Error != nil {
				continue
			}
			for _, p := range mt.Partitions {
				if err := foldPartition(ctx, cfg, te, p.ID, rows); err != nil {
					return nil, err
				}
			}
		}
	}
	return state, nil
}

func foldPartition(ctx context.Context, cfg Config, te *tableEnc, partition int, rows map[string]map[string]*string) error {
	var conn *kafkago.Conn
	var err error
	for _, b := range cfg.Brokers {
		if conn, err = kafkago.DialLeader(ctx, "tcp", b, te.topic, partition); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("fold %s partition %d: %w", te.topic, partition, err)
	}
	defer conn.Close()
	first, end, err := conn.ReadOffsets()
	if err != nil {
		return fmt.Errorf("fold %s partition %d: %w", te.topic, partition, err)
	}
	if _, err := conn.Seek(first, kafkago.SeekAbsolute); err != nil {
		return err
	}
	for off := first; off < end; {
		conn.SetReadDeadline(time.Now().Add(cfg.Timeout))
		batch := conn.ReadBatch(1, 64<<20)
		for {
			msg, err := batch.ReadMessage()
			if err != nil {
				break
			}
			off = msg.Offset + 1
			if err := foldRecord(te, msg.Key, msg.Value, rows); err != nil {
				batch.Close()
				return fmt.Errorf("fold %s partition %d offset %d: %w", te.topic, partition, msg.Offset, err)
			}
			if off >= end {
				break
			}
		}
		if err := batch.Close(); err != nil && off < end {
			return fmt.Errorf("fold %s partition %d: %w", te.topic, partition, err)
		}
	}
	return nil
}

// payload strips JsonConverter's schema envelope when there is one.
func payload(raw []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if m, ok := v.(map[string]any); ok && len(m) == 2 {
		if _, ok := m["schema"]; ok {
			if p, ok := m["payload"]; ok {
				return p, nil
			}
		}
	}
	return v, nil
}

func foldRecord(te *tableEnc, key, value []byte, rows map[string]map[string]*string) error {
	keyText, err := te.foldKey(key)
	if err != nil {
		return err
	}
	if value == nil {
		delete(rows, keyText)
		return nil
	}
	p, err := payload(value)
	if err != nil {
		return fmt.Errorf("value: %w", err)
	}
	env, ok := p.(map[string]any)
	if !ok {
		return fmt.Errorf("value is not an envelope")
	}
	switch env["op"] {
	case "d":
		delete(rows, keyText)
		return nil
	case "c", "u", "r":
	default:
		return fmt.Errorf("unexpected op %v", env["op"])
	}
	after, ok := env["after"].(map[string]any)
	if !ok {
		return fmt.Errorf("%v record without after", env["op"])
	}
	prev := rows[keyText]
	row := map[string]*string{}
	for _, c := range te.cols {
		v := after[c.name]
		if c.codec.toast != nil {
			if js, _ := json.Marshal(v); string(js) == string(c.codec.toast) {
				row[c.name] = prev[c.name]
				continue
			}
		}
		t, err := c.codec.decode(v)
		if err != nil {
			return fmt.Errorf("column %s: %w", c.name, err)
		}
		row[c.name] = t
	}
	rows[keyText] = row
	return nil
}

// KeyText is how State names a row: its primary key columns' PostgreSQL
// text, in key order, as a JSON array of strings.
func KeyText(pk []string) string {
	b, _ := json.Marshal(pk)
	return string(b)
}

func (te *tableEnc) foldKey(key []byte) (string, error) {
	k, err := payload(key)
	if err != nil {
		return "", fmt.Errorf("key: %w", err)
	}
	km, ok := k.(map[string]any)
	if !ok {
		return "", fmt.Errorf("key is not a struct")
	}
	pk := make([]string, len(te.key))
	for i, c := range te.key {
		t, err := c.codec.decode(km[c.name])
		if err != nil || t == nil {
			return "", fmt.Errorf("key column %s: %v", c.name, err)
		}
		pk[i] = *t
	}
	return KeyText(pk), nil
}
