package kafka

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/promoted/promoted"
)

// When a primary key changes Debezium writes a delete of the old key and a
// create of the new one, and links them with record headers
// (__debezium.newkey on the delete and its tombstone, __debezium.oldkey on
// the create). Kafka Connect writes header values with its default
// SimpleHeaderConverter, which renders a Struct with Values.append:
// {"id":1,"name":"a"}, strings quoted with only \ and " escaped, numbers
// as Java prints them, Decimals as BigDecimal.toString, bytes as base64.

// Header names Debezium's RelationalChangeRecordEmitter uses.
const (
	headerNewKey = "__debezium.newkey"
	headerOldKey = "__debezium.oldkey"
)

func (te *tableEnc) keyHeader(row promoted.Row) ([]byte, error) {
	b := []byte{'{'}
	for i, c := range te.key {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendValuesString(b, c.name)
		b = append(b, ':')
		v := row[c.idx]
		if v.Kind != promoted.Text {
			b = append(b, "null"...)
			continue
		}
		var err error
		if b, err = appendHeaderValue(b, c.codec, v.Data); err != nil {
			return nil, fmt.Errorf("encode %s key header: %w", te.table, err)
		}
	}
	return append(b, '}'), nil
}

// appendValuesString is Values.append for an embedded string.
func appendValuesString(b []byte, s string) []byte {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return append(append(append(b, '"'), s...), '"')
}

func appendHeaderValue(b []byte, c *codec, text []byte) ([]byte, error) {
	switch c.conv {
	case convDecimal, convMoney:
		neg, digits, scale, err := splitDecimal(strings.NewReplacer("$", "", ",", "", "(", "-", ")", "").Replace(string(text)))
		if err != nil {
			return b, err
		}
		for scale < c.scale {
			digits, scale = digits+"0", scale+1
		}
		return append(b, javaBigDecimalString(neg, digits, scale)...), nil
	}
	js, err := c.appendText(nil, text)
	if err != nil {
		return b, err
	}
	return appendValuesFromJSON(b, js)
}

// appendValuesFromJSON re-renders a JSON value the way Values.append
// renders the equivalent Connect value.
func appendValuesFromJSON(b []byte, js []byte) ([]byte, error) {
	var v any
	d := json.NewDecoder(strings.NewReader(string(js)))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return b, err
	}
	return appendValuesAny(b, v), nil
}

func appendValuesAny(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case json.Number:
		return append(b, x...)
	case bool:
		if x {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	case string:
		switch x {
		case "NaN", "Infinity", "-Infinity":
			// A float's special value: Jackson quotes it, Values does not.
			return append(b, x...)
		}
		return appendValuesString(b, x)
	case []any:
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendValuesAny(b, e)
		}
		return append(b, ']')
	case map[string]any:
		// Only VariableScaleDecimal's struct reaches here.
		b = append(b, `{"scale":`...)
		b = appendValuesAny(b, x["scale"])
		b = append(b, `,"value":`...)
		b = appendValuesAny(b, x["value"])
		return append(b, '}')
	}
	return b
}

// javaBigDecimalString is BigDecimal.toString of an unscaled value and a
// non-negative scale: plain unless the adjusted exponent is below -6.
func javaBigDecimalString(neg bool, digits string, scale int) string {
	digits = strings.TrimLeft(digits, "0")
	if digits == "" {
		digits = "0"
		neg = false
	}
	var sb strings.Builder
	if neg {
		sb.WriteByte('-')
	}
	adjusted := len(digits) - 1 - scale
	if adjusted >= -6 {
		switch {
		case scale == 0:
			sb.WriteString(digits)
		case len(digits) > scale:
			sb.WriteString(digits[:len(digits)-scale])
			sb.WriteByte('.')
			sb.WriteString(digits[len(digits)-scale:])
		default:
			sb.WriteString("0.")
			sb.WriteString(strings.Repeat("0", scale-len(digits)))
			sb.WriteString(digits)
		}
		return sb.String()
	}
	sb.WriteByte(digits[0])
	if len(digits) > 1 {
		sb.WriteByte('.')
		sb.WriteString(digits[1:])
	}
	sb.WriteString(fmt.Sprintf("E%d", adjusted))
	return sb.String()
}
