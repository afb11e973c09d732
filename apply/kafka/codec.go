package kafka

import (
	"crypto/md5"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"unsafe"
)

// A codec turns one column's PostgreSQL text into the JSON Kafka Connect's
// JsonConverter writes for the Java value Debezium's PostgresValueConverter
// makes of it, under Debezium's defaults (decimal.handling.mode as
// configured, time.precision.mode adaptive, binary.handling.mode bytes,
// interval.handling.mode numeric).
type codec struct {
	conv   conv
	schema *schema
	// scale is a Decimal's scale, or a ZonedTimestamp's fraction width.
	scale int
	typ   string
	elem  *codec
	// toast is the JSON written for an unchanged TOAST value (Debezium's
	// unavailable-value placeholder for the type); nil when Debezium has no
	// placeholder of this type.
	toast []byte
	// fallback is the JSON Debezium writes when a NOT NULL column has no
	// value (the non-key columns of a REPLICA IDENTITY DEFAULT delete).
	fallback []byte
}

type conv uint8

const (
	convInt conv = iota + 1
	convFloat32
	convFloat64
	convBool
	convString
	convBytes
	convDecimal
	convVarDecimal
	convDecimalString
	convDecimalDouble
	convMoney
	convMoneyString
	convMoneyDouble
	convZonedTimestamp
	convMicroTimestamp
	convMilliTimestamp
	convDate
	convMicroTime
	convMilliTime
	convZonedTime
	convInterval
	convBitBool
	convArray
)

// Placeholder is what Debezium writes for a value PostgreSQL did not send
// (an unchanged TOASTed column): unavailable.value.placeholder's default.
const Placeholder = "__debezium_unavailable_value"

// PostgreSQL type OIDs the mapping needs.
const (
	oidBool        = 16
	oidBytea       = 17
	oidChar        = 18
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidJSON        = 114
	oidXML         = 142
	oidCIDR        = 650
	oidFloat4      = 700
	oidFloat8      = 701
	oidMacaddr8    = 774
	oidMoney       = 790
	oidMacaddr     = 829
	oidInet        = 869
	oidBpchar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTime        = 1083
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidInterval    = 1186
	oidTimetz      = 1266
	oidBit         = 1560
	oidVarbit      = 1562
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
	oidInt4range   = 3904
	oidNumrange    = 3906
	oidTsrange     = 3908
	oidTstzrange   = 3910
	oidDaterange   = 3912
	oidInt8range   = 3926
)

// Decimal handling modes (decimal.handling.mode).
const (
	DecimalPrecise = "precise"
	DecimalString  = "string"
	DecimalDouble  = "double"
)

// newCodec maps a column type to Debezium's schema and conversion. It
// returns nil for types Debezium leaves out of its records by default
// (include.unknown.datatypes=false): tsvector, composite types, and the
// few whose encoding is not implemented here (bit strings longer than one
// bit, point, hstore, geometry, multi-dimensional ranges).
func newCodec(ct *ColumnType, decimal string) *codec {
	if ct.Elem != nil {
		return newArrayCodec(ct, decimal)
	}
	c := &codec{typ: ct.Name}
	str := func(s *schema) *codec {
		c.conv, c.schema, c.fallback = convString, s, []byte(`""`)
		c.toast = appendJSONString(nil, Placeholder)
		return c
	}
	if ct.Kind == 'e' {
		return str(enumSchema(strings.Join(ct.Enum, ",")))
	}
	switch ct.Base {
	case oidInt2:
		c.conv, c.schema, c.fallback = convInt, prim("int16", true), []byte("0")
	case oidInt4:
		c.conv, c.schema, c.fallback = convInt, prim("int32", true), []byte("0")
	case oidInt8, oidOID:
		c.conv, c.schema, c.fallback = convInt, prim("int64", true), []byte("0")
	case oidFloat4:
		c.conv, c.schema, c.fallback = convFloat32, prim("float32", true), []byte("0.0")
	case oidFloat8:
		c.conv, c.schema, c.fallback = convFloat64, prim("float64", true), []byte("0.0")
	case oidBool:
		c.conv, c.schema, c.fallback = convBool, prim("boolean", true), []byte("false")
	case oidText, oidVarchar, oidBpchar, oidChar, oidName, oidInet, oidCIDR, oidMacaddr, oidMacaddr8,
		oidInt4range, oidNumrange, oidTsrange, oidTstzrange, oidDaterange, oidInt8range:
		return str(prim("string", true))
	case oidJSON, oidJSONB:
		return str(logical("string", "io.debezium.data.Json", 1))
	case oidUUID:
		return str(logical("string", "io.debezium.data.Uuid", 1))
	case oidXML:
		return str(logical("string", "io.debezium.data.Xml", 1))
	case oidBytea:
		c.conv, c.schema, c.fallback = convBytes, prim("bytes", true), []byte(`""`)
		c.toast = appendJSONString(nil, base64.StdEncoding.EncodeToString([]byte(Placeholder)))
	case oidNumeric:
		precision, scale := -1, 0
		if ct.Typmod >= 4 {
			precision, scale = int((ct.Typmod-4)>>16&0xffff), int((ct.Typmod-4)&0xffff)
		}
		c.scale = scale
		switch decimal {
		case DecimalString:
			c.conv, c.schema = convDecimalString, prim("string", true)
			c.fallback = appendJSONString(nil, zeroDecimal(scale))
		case DecimalDouble:
			c.conv, c.schema, c.fallback = convDecimalDouble, prim("float64", true), []byte("0.0")
		default:
			if precision < 0 {
				c.conv, c.schema = convVarDecimal, variableScaleDecimalSchema()
				c.fallback = []byte(`{"scale":0,"value":"AA=="}`)
			} else {
				c.conv, c.schema, c.fallback = convDecimal, decimalSchema(scale, precision, true), []byte(`"AA=="`)
			}
		}
	case oidMoney:
		c.scale = 2
		switch decimal {
		case DecimalString:
			c.conv, c.schema, c.fallback = convMoneyString, prim("string", true), []byte(`"0.00"`)
		case DecimalDouble:
			c.conv, c.schema, c.fallback = convMoneyDouble, prim("float64", true), []byte("0.0")
		default:
			c.conv, c.schema, c.fallback = convMoney, decimalSchema(2, 0, false), []byte(`"AA=="`)
		}
	case oidTimestamptz:
		c.conv, c.schema, c.scale = convZonedTimestamp, logical("string", "io.debezium.time.ZonedTimestamp", 1), timePrecision(ct.Typmod)
		c.fallback = []byte(`"1970-01-01T00:00:00Z"`)
	case oidTimestamp:
		if timePrecision(ct.Typmod) <= 3 {
			c.conv, c.schema = convMilliTimestamp, logical("int64", "io.debezium.time.Timestamp", 1)
		} else {
			c.conv, c.schema = convMicroTimestamp, logical("int64", "io.debezium.time.MicroTimestamp", 1)
		}
		c.fallback = []byte("0")
	case oidDate:
		c.conv, c.schema, c.fallback = convDate, logical("int32", "io.debezium.time.Date", 1), []byte("0")
	case oidTime:
		if timePrecision(ct.Typmod) <= 3 {
			c.conv, c.schema = convMilliTime, logical("int32", "io.debezium.time.Time", 1)
		} else {
			c.conv, c.schema = convMicroTime, logical("int64", "io.debezium.time.MicroTime", 1)
		}
		c.fallback = []byte("0")
	case oidTimetz:
		c.conv, c.schema, c.fallback = convZonedTime, logical("string", "io.debezium.time.ZonedTime", 1), []byte(`"00:00:00Z"`)
	case oidInterval:
		c.conv, c.schema, c.fallback = convInterval, logical("int64", "io.debezium.time.MicroDuration", 1), []byte("0")
	case oidBit, oidVarbit:
		if ct.Typmod != 1 {
			return nil
		}
		c.conv, c.schema, c.fallback = convBitBool, prim("boolean", true), []byte("false")
	default:
		switch ct.Name {
		case "citext", "isbn":
			return str(prim("string", true))
		}
		return nil
	}
	c.schema = c.schema.withOptional(true)
	return c
}

// timePrecision is a time type's fractional digits: its typmod, or 6.
func timePrecision(typmod int32) int {
	if typmod < 0 {
		return 6
	}
	return int(typmod)
}

func zeroDecimal(scale int) string {
	if scale <= 0 {
		return "0"
	}
	return "0." + strings.Repeat("0", scale)
}

// newArrayCodec follows PostgresValueConverter.schemaBuilder for arrays:
// the listed element types become Connect arrays of the optional element
// schema; an enum array's element schema is not optional; the rest
// (money, interval, bit, xml, point arrays) are left out.
func newArrayCodec(ct *ColumnType, decimal string) *codec {
	e := ct.Elem
	switch e.Base {
	case oidMoney, oidInterval, oidBit, oidVarbit, oidXML, oidName:
		return nil
	}
	elem := newCodec(e, decimal)
	if elem == nil {
		return nil
	}
	items := elem.schema
	switch {
	case e.Kind == 'e':
		items = items.withOptional(false)
	case e.Base == oidTime:
		// time[] is always MicroTime, whatever its precision.
		elem.conv, items = convMicroTime, logical("int64", "io.debezium.time.MicroTime", 1).withOptional(true)
	}
	c := &codec{conv: convArray, typ: ct.Name, elem: elem, fallback: []byte("[]"),
		schema: &schema{typ: "array", optional: true, items: items}}
	// UnchangedToastedReplicationMessageColumn's placeholders by array type.
	switch e.Base {
	case oidText, oidVarchar, oidJSON, oidJSONB:
		c.toast = append(append([]byte("["), appendJSONString(nil, Placeholder)...), ']')
	case oidBytea:
		c.toast = append(append([]byte("["), elem.toast...), ']')
	case oidInt4, oidDate, oidInt8:
		b := []byte("[")
		for i := 0; i < len(Placeholder); i++ {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(Placeholder[i]), 10)
		}
		c.toast = append(b, ']')
	case oidUUID:
		c.toast = append(append([]byte("["), appendJSONString(nil, nameUUIDFromBytes([]byte(Placeholder)))...), ']')
	}
	return c
}

// nameUUIDFromBytes is Java's UUID.nameUUIDFromBytes (a version 3 UUID).
func nameUUIDFromBytes(b []byte) string {
	h := md5.Sum(b)
	h[6] = h[6]&0x0f | 0x30
	h[8] = h[8]&0x3f | 0x80
	const hx = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, v := range h {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hx[v>>4], hx[v&0xf])
	}
	return string(out)
}

// appendText appends the JSON of one non-NULL value given as PostgreSQL
// text.
func (c *codec) appendText(b []byte, text []byte) ([]byte, error) {
	switch c.conv {
	case convInt:
		if !shortInt(text) {
			if _, err := strconv.ParseInt(string(text), 10, 64); err != nil {
				return b, fmt.Errorf("%q is not an integer", text)
			}
		}
		return append(b, text...), nil
	case convFloat32, convFloat64:
		bits := 64
		if c.conv == convFloat32 {
			bits = 32
		}
		f, err := strconv.ParseFloat(string(text), bits)
		if err != nil {
			return b, fmt.Errorf("%q is not a %s", text, c.typ)
		}
		return appendJavaFloat(b, f, bits), nil
	case convBool, convBitBool:
		switch string(text) {
		case "t", "1":
			return append(b, "true"...), nil
		case "f", "0":
			return append(b, "false"...), nil
		}
		return b, fmt.Errorf("%q is not a boolean", text)
	case convString:
		if !validUTF8(text) {
			return b, fmt.Errorf("the value is not valid UTF-8")
		}
		return appendJSONBytesString(b, text), nil
	case convBytes:
		raw, err := decodeBytea(text)
		if err != nil {
			return b, err
		}
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, raw)
		return append(b, '"'), nil
	case convArray:
		elems, err := parseArray(string(text))
		if err != nil {
			return b, err
		}
		b = append(b, '[')
		for i, e := range elems {
			if i > 0 {
				b = append(b, ',')
			}
			if e == nil {
				b = append(b, "null"...)
				continue
			}
			if b, err = c.elem.appendText(b, []byte(*e)); err != nil {
				return b, err
			}
		}
		return append(b, ']'), nil
	}
	if out, ok := c.appendShortDecimal(b, text); ok {
		return out, nil
	}
	// The text as a string without a copy: the conversions only read it
	// during the call (errors quote it into messages of their own), and a
	// row's bytes never change.
	return c.appendTemporalOrNumeric(b, unsafe.String(unsafe.SliceData(text), len(text)))
}

// decodeBytea reads bytea's hex output (bytea_output is pinned to hex).
func decodeBytea(text []byte) ([]byte, error) {
	if len(text) < 2 || text[0] != '\\' || text[1] != 'x' || len(text)%2 != 0 {
		return nil, fmt.Errorf("bytea value is not in hex format")
	}
	out := make([]byte, (len(text)-2)/2)
	for i := range out {
		hi, ok1 := unhex(text[2+2*i])
		lo, ok2 := unhex(text[3+2*i])
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("bytea value is not in hex format")
		}
		out[i] = hi<<4 | lo
	}
	return out, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
