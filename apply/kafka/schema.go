package kafka

import "strconv"

// schema is a Kafka Connect schema, as much of it as Debezium's records
// use. It renders itself as JsonConverter does with schemas enabled, so a
// consumer that reads the "schema" part (the JDBC sink, the unwrap
// transform, schema-aware warehouses) sees what Debezium would send.
type schema struct {
	typ      string // int16 int32 int64 float32 float64 boolean string bytes array struct
	optional bool
	name     string
	version  int // 0: none
	doc      string
	params   [][2]string // in insertion order, as Connect's LinkedHashMap keeps them
	// def, when set, is the default value already rendered as JSON.
	def    []byte
	fields []field
	items  *schema
}

type field struct {
	name   string
	schema *schema
}

// The Connect primitive schemas Debezium uses.
func prim(typ string, optional bool) *schema { return &schema{typ: typ, optional: optional} }

// withOptional returns a copy of s with optional set.
func (s *schema) withOptional(optional bool) *schema {
	c := *s
	c.optional = optional
	return &c
}

// appendJSON renders s as JsonConverter.asJsonSchema does: type, then
// items or fields, optional, name, version, doc, parameters, default.
func (s *schema) appendJSON(b []byte) []byte {
	return s.appendJSONField(b, "")
}

func (s *schema) appendJSONField(b []byte, fieldName string) []byte {
	b = append(b, `{"type":`...)
	b = appendJSONString(b, s.typ)
	switch s.typ {
	case "array":
		b = append(b, `,"items":`...)
		b = s.items.appendJSON(b)
	case "struct":
		b = append(b, `,"fields":[`...)
		for i, f := range s.fields {
			if i > 0 {
				b = append(b, ',')
			}
			b = f.schema.appendJSONField(b, f.name)
		}
		b = append(b, ']')
	}
	b = append(b, `,"optional":`...)
	b = strconv.AppendBool(b, s.optional)
	if s.name != "" {
		b = append(b, `,"name":`...)
		b = appendJSONString(b, s.name)
	}
	if s.version != 0 {
		b = append(b, `,"version":`...)
		b = strconv.AppendInt(b, int64(s.version), 10)
	}
	if s.doc != "" {
		b = append(b, `,"doc":`...)
		b = appendJSONString(b, s.doc)
	}
	if s.params != nil {
		b = append(b, `,"parameters":{`...)
		for i, p := range s.params {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, p[0])
			b = append(b, ':')
			b = appendJSONString(b, p[1])
		}
		b = append(b, '}')
	}
	if s.def != nil {
		b = append(b, `,"default":`...)
		b = append(b, s.def...)
	}
	if fieldName != "" {
		b = append(b, `,"field":`...)
		b = appendJSONString(b, fieldName)
	}
	return append(b, '}')
}

// Debezium's logical types, as their builders define them (name, version,
// parameters); see io.debezium.time.*, io.debezium.data.* and Kafka
// Connect's Decimal.
func logical(typ, name string, version int) *schema {
	return &schema{typ: typ, name: name, version: version}
}

func decimalSchema(scale int, precision int, withPrecision bool) *schema {
	s := logical("bytes", "org.apache.kafka.connect.data.Decimal", 1)
	s.params = [][2]string{{"scale", strconv.Itoa(scale)}}
	if withPrecision {
		s.params = append(s.params, [2]string{"connect.decimal.precision", strconv.Itoa(precision)})
	}
	return s
}

func variableScaleDecimalSchema() *schema {
	return &schema{typ: "struct", name: "io.debezium.data.VariableScaleDecimal", version: 1, doc: "Variable scaled decimal",
		fields: []field{{"scale", prim("int32", false)}, {"value", prim("bytes", false)}}}
}

func enumSchema(allowed string) *schema {
	s := logical("string", "io.debezium.data.Enum", 1)
	s.params = [][2]string{{"allowed", allowed}}
	return s
}

func bitsSchema(length int) *schema {
	s := logical("bytes", "io.debezium.data.Bits", 1)
	s.params = [][2]string{{"length", strconv.Itoa(length)}}
	return s
}

// sourceSchema is io.debezium.connector.postgresql.Source of Debezium 2.7:
// the common fields (AbstractSourceInfoStructMaker) then PostgreSQL's.
func sourceSchema() *schema {
	snapshot := enumSchema("true,last,false,incremental")
	snapshot.optional = true
	snapshot.def = []byte(`"false"`)
	return &schema{typ: "struct", name: "io.debezium.connector.postgresql.Source", fields: []field{
		{"version", prim("string", false)},
		{"connector", prim("string", false)},
		{"name", prim("string", false)},
		{"ts_ms", prim("int64", false)},
		{"snapshot", snapshot},
		{"db", prim("string", false)},
		{"sequence", prim("string", true)},
		{"ts_us", prim("int64", true)},
		{"ts_ns", prim("int64", true)},
		{"schema", prim("string", false)},
		{"table", prim("string", false)},
		{"txId", prim("int64", true)},
		{"lsn", prim("int64", true)},
		{"xmin", prim("int64", true)},
	}}
}

// transactionBlockSchema is SchemaFactory.transactionBlockSchema: the
// optional "transaction" field of every envelope.
func transactionBlockSchema() *schema {
	return &schema{typ: "struct", optional: true, name: "event.block", version: 1, fields: []field{
		{"id", prim("string", false)},
		{"total_order", prim("int64", false)},
		{"data_collection_order", prim("int64", false)},
	}}
}

// envelopeSchema is the value schema of a table's change records, as
// Envelope.defineSchema builds it for TableSchemaBuilder.
func envelopeSchema(name string, value *schema) *schema {
	return &schema{typ: "struct", name: name, version: 2, fields: []field{
		{"before", value},
		{"after", value},
		{"source", sourceSchema()},
		{"transaction", transactionBlockSchema()},
		{"op", prim("string", false)},
		{"ts_ms", prim("int64", true)},
		{"ts_us", prim("int64", true)},
		{"ts_ns", prim("int64", true)},
	}}
}

// The transaction topic's key and value (SchemaFactory.transactionKeySchema
// and transactionValueSchema).
func transactionKeySchema() *schema {
	return &schema{typ: "struct", name: "io.debezium.connector.common.TransactionMetadataKey", version: 1,
		fields: []field{{"id", prim("string", false)}}}
}

func transactionValueSchema() *schema {
	collection := &schema{typ: "struct", optional: true, name: "event.collection", version: 1, fields: []field{
		{"data_collection", prim("string", false)},
		{"event_count", prim("int64", false)},
	}}
	return &schema{typ: "struct", name: "io.debezium.connector.common.TransactionMetadataValue", version: 1, fields: []field{
		{"status", prim("string", false)},
		{"id", prim("string", false)},
		{"event_count", prim("int64", true)},
		{"data_collections", &schema{typ: "array", optional: true, items: collection}},
		{"ts_ms", prim("int64", false)},
	}}
}

// The heartbeat topic's key and value (SchemaFactory.heartbeatKeySchema and
// heartbeatValueSchema).
func heartbeatKeySchema() *schema {
	return &schema{typ: "struct", name: "io.debezium.connector.common.ServerNameKey", version: 1,
		fields: []field{{"serverName", prim("string", false)}}}
}

func heartbeatValueSchema() *schema {
	return &schema{typ: "struct", name: "io.debezium.connector.common.Heartbeat", version: 1,
		fields: []field{{"ts_ms", prim("int64", false)}}}
}
