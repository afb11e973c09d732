package kafka

import (
	"strconv"
	"time"

	"github.com/promoted/promoted"
)

// Transaction metadata and heartbeats: the records Debezium writes besides
// the changes themselves.

// txnState follows the source transaction being written (it may arrive in
// several parts), for transaction metadata and positions.
type txnState struct {
	open     bool
	xid      uint32
	final    promoted.LSN
	begun    bool
	total    int64
	perTable map[string]int64
	// order is the data collections in the order of their first event,
	// which is the order a java.util.HashMap receives them in.
	order []string
}

// event counts one change record of the transaction and returns its
// total and per-collection order.
func (t *txnState) event(collection string) (int64, int64) {
	if t.perTable == nil {
		t.perTable = map[string]int64{}
	}
	if _, ok := t.perTable[collection]; !ok {
		t.order = append(t.order, collection)
	}
	t.total++
	t.perTable[collection]++
	return t.total, t.perTable[collection]
}

// txnID is PostgresTransactionMonitor's transaction id: "xid:lsn".
func txnID(xid uint32, lsn promoted.LSN) string {
	return strconv.FormatUint(uint64(xid), 10) + ":" + strconv.FormatUint(uint64(lsn), 10)
}

func (s *Sink) txnKey(id string) []byte {
	b := make([]byte, 0, 256)
	if !s.cfg.NoSchema {
		b = append(transactionKeySchema().appendJSON(append(b, `{"schema":`...)), `,"payload":`...)
	}
	b = append(b, `{"id":`...)
	b = appendJSONString(b, id)
	b = append(b, '}')
	if !s.cfg.NoSchema {
		b = append(b, '}')
	}
	return b
}

// txnValue renders a BEGIN (collections nil) or END record's value.
func (s *Sink) txnValue(status, id string, t *txnState, commit time.Time) []byte {
	b := make([]byte, 0, 1024)
	if !s.cfg.NoSchema {
		b = append(transactionValueSchema().appendJSON(append(b, `{"schema":`...)), `,"payload":`...)
	}
	b = append(b, `{"status":`...)
	b = appendJSONString(b, status)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, id)
	if status == "BEGIN" {
		b = append(b, `,"event_count":null,"data_collections":null`...)
	} else {
		b = append(b, `,"event_count":`...)
		b = strconv.AppendInt(b, t.total, 10)
		b = append(b, `,"data_collections":[`...)
		for i, c := range javaHashMapOrder(t.order) {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"data_collection":`...)
			b = appendJSONString(b, c)
			b = append(b, `,"event_count":`...)
			b = strconv.AppendInt(b, t.perTable[c], 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"ts_ms":`...)
	b = strconv.AppendInt(b, commit.UnixMilli(), 10)
	b = append(b, '}')
	if !s.cfg.NoSchema {
		b = append(b, '}')
	}
	return b
}

// heartbeatRecord is HeartbeatImpl's record: key serverName, value ts_ms.
func (s *Sink) heartbeatRecord() (key, value []byte) {
	key = make([]byte, 0, 256)
	value = make([]byte, 0, 256)
	if !s.cfg.NoSchema {
		key = append(heartbeatKeySchema().appendJSON(append(key, `{"schema":`...)), `,"payload":`...)
		value = append(heartbeatValueSchema().appendJSON(append(value, `{"schema":`...)), `,"payload":`...)
	}
	key = append(key, `{"serverName":`...)
	key = appendJSONString(key, s.cfg.Prefix)
	key = append(key, '}')
	value = append(value, `{"ts_ms":`...)
	value = strconv.AppendInt(value, s.now().UnixMilli(), 10)
	value = append(value, '}')
	if !s.cfg.NoSchema {
		key = append(key, '}')
		value = append(value, '}')
	}
	return key, value
}
