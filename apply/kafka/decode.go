package kafka

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// Decoding turns a record's JSON value of a column back into PostgreSQL's
// text for it, so tests and `verify` can compare a topic with the source.
// Where Debezium's format keeps everything (integers, text, bytea, fixed
// numeric, dates, timestamps) the text is exactly PostgreSQL's; where it
// does not (numeric without typmod loses trailing zeros, timetz its
// offset, interval its months, double and string decimal modes their
// form), the text means the same value and compares equal in PostgreSQL.

func (c *codec) decode(v any) (*string, error) {
	if v == nil {
		return nil, nil
	}
	s, err := c.decodeText(v)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", c.typ, err)
	}
	return &s, nil
}

func num(v any) (json.Number, error) {
	n, ok := v.(json.Number)
	if !ok {
		return "", fmt.Errorf("%v is not a number", v)
	}
	return n, nil
}

func str(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%v is not a string", v)
	}
	return s, nil
}

func (c *codec) decodeText(v any) (string, error) {
	switch c.conv {
	case convInt:
		n, err := num(v)
		return string(n), err
	case convFloat32, convFloat64:
		bits := 64
		if c.conv == convFloat32 {
			bits = 32
		}
		if s, ok := v.(string); ok {
			return s, nil // NaN, Infinity, -Infinity: PostgreSQL's spelling too
		}
		n, err := num(v)
		if err != nil {
			return "", err
		}
		f, err := strconv.ParseFloat(string(n), bits)
		return pgFloatText(f, bits), err
	case convBool:
		if b, ok := v.(bool); ok {
			if b {
				return "t", nil
			}
			return "f", nil
		}
		return "", fmt.Errorf("%v is not a boolean", v)
	case convBitBool:
		if b, ok := v.(bool); ok && b {
			return "1", nil
		}
		return "0", nil
	case convString, convDecimalString, convMoneyString:
		s, err := str(v)
		if c.conv == convDecimalString {
			switch s {
			case "NAN":
				return "NaN", nil
			case "POSITIVE_INFINITY":
				return "Infinity", nil
			case "NEGATIVE_INFINITY":
				return "-Infinity", nil
			}
		}
		return s, err
	case convBytes:
		s, err := str(v)
		if err != nil {
			return "", err
		}
		raw, err := base64.StdEncoding.DecodeString(s)
		return `\x` + hex.EncodeToString(raw), err
	case convDecimal, convMoney:
		s, err := str(v)
		if err != nil {
			return "", err
		}
		return unscaledText(s, c.scale)
	case convVarDecimal:
		m, ok := v.(map[string]any)
		if !ok {
			return "", fmt.Errorf("%v is not a VariableScaleDecimal", v)
		}
		sc, err := num(m["scale"])
		if err != nil {
			return "", err
		}
		scale, _ := strconv.Atoi(string(sc))
		s, err := str(m["value"])
		if err != nil {
			return "", err
		}
		return unscaledText(s, scale)
	case convDecimalDouble, convMoneyDouble:
		if s, ok := v.(string); ok {
			return s, nil
		}
		n, err := num(v)
		return string(n), err
	case convZonedTimestamp:
		s, err := str(v)
		if err != nil || s == "infinity" || s == "-infinity" {
			return s, err
		}
		return pgTimestampFromISO(s)
	case convMicroTimestamp, convMilliTimestamp:
		n, err := num(v)
		if err != nil {
			return "", err
		}
		x, err := strconv.ParseInt(string(n), 10, 64)
		if c.conv == convMilliTimestamp {
			switch x {
			case microsPosInfinity / 1000:
				return "infinity", nil
			case microsNegInfinity / 1000:
				return "-infinity", nil
			}
			x *= 1000
		}
		switch x {
		case microsPosInfinity:
			return "infinity", nil
		case microsNegInfinity:
			return "-infinity", nil
		}
		return pgTimestampText(x, ""), err
	case convDate:
		n, err := num(v)
		if err != nil {
			return "", err
		}
		d, err := strconv.ParseInt(string(n), 10, 64)
		switch d {
		case int64(int32(epochDays(-5877611, 6, 21))):
			return "infinity", nil
		case int64(int32(epochDays(-5877611, 6, 22))):
			return "-infinity", nil
		}
		return pgDateText(d), err
	case convMicroTime, convMilliTime:
		n, err := num(v)
		if err != nil {
			return "", err
		}
		x, err := strconv.ParseInt(string(n), 10, 64)
		if c.conv == convMilliTime {
			x *= 1000
		}
		return string(appendPGClock(nil, x)), err
	case convZonedTime:
		s, err := str(v)
		return strings.TrimSuffix(s, "Z") + "+00", err
	case convInterval:
		n, err := num(v)
		if err != nil {
			return "", err
		}
		x, err := strconv.ParseInt(string(n), 10, 64)
		return strconv.FormatInt(x, 10) + " microseconds", err
	case convArray:
		list, ok := v.([]any)
		if !ok {
			return "", fmt.Errorf("%v is not an array", v)
		}
		var sb strings.Builder
		sb.WriteByte('{')
		for i, e := range list {
			if i > 0 {
				sb.WriteByte(',')
			}
			t, err := c.elem.decode(e)
			if err != nil {
				return "", err
			}
			if t == nil {
				sb.WriteString("NULL")
				continue
			}
			sb.WriteString(pgArrayQuote(*t))
		}
		sb.WriteByte('}')
		return sb.String(), nil
	}
	return "", fmt.Errorf("no decoding for %s", c.typ)
}

// unscaledText reads a base64 two's-complement unscaled value.
func unscaledText(b64 string, scale int) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", err
	}
	x := new(big.Int).SetBytes(raw)
	if len(raw) > 0 && raw[0]&0x80 != 0 {
		x.Sub(x, new(big.Int).Lsh(big.NewInt(1), uint(8*len(raw))))
	}
	neg := x.Sign() < 0
	digits := new(big.Int).Abs(x).String()
	if scale > 0 {
		for len(digits) <= scale {
			digits = "0" + digits
		}
		digits = digits[:len(digits)-scale] + "." + digits[len(digits)-scale:]
	}
	if neg {
		digits = "-" + digits
	}
	return digits, nil
}

// pgFloatText is PostgreSQL's float4out/float8out with
// extra_float_digits > 0: the shortest exact digits, in fixed notation
// for decimal exponents from -4 up to 14 (float8) or 5 (float4).
func pgFloatText(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		if math.Signbit(f) {
			return "-0"
		}
		return "0"
	}
	e := strconv.FormatFloat(f, 'e', -1, bits)
	mant, expPart, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expPart)
	limit := 15
	if bits == 32 {
		limit = 6
	}
	if exp < -4 || exp >= limit {
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		return fmt.Sprintf("%se%s%02d", mant, sign, exp)
	}
	return strconv.FormatFloat(f, 'f', -1, bits)
}

// pgDateText prints epoch days as DateStyle ISO does.
func pgDateText(days int64) string {
	y, m, d := fromEpochDays(days)
	bc := ""
	if y <= 0 {
		y, bc = 1-y, " BC"
	}
	return fmt.Sprintf("%04d-%02d-%02d%s", y, m, d, bc)
}

// pgTimestampText prints epoch microseconds as timestamp (zone "") or
// timestamptz in UTC (zone "+00") output.
func pgTimestampText(micros int64, zone string) string {
	days := floorDiv(micros, 86_400_000_000)
	rem := micros - days*86_400_000_000
	y, m, d := fromEpochDays(days)
	bc := ""
	if y <= 0 {
		y, bc = 1-y, " BC"
	}
	b := fmt.Appendf(nil, "%04d-%02d-%02d ", y, m, d)
	b = appendPGClock(b, rem)
	return string(b) + zone + bc
}

// appendPGClock prints microseconds of day as PostgreSQL does: seconds
// always, the fraction without trailing zeros.
func appendPGClock(b []byte, micros int64) []byte {
	secs := micros / 1_000_000
	b = fmt.Appendf(b, "%02d:%02d:%02d", secs/3600, secs/60%60, secs%60)
	if f := micros % 1_000_000; f != 0 {
		s := strings.TrimRight(fmt.Sprintf("%06d", f), "0")
		b = append(append(b, '.'), s...)
	}
	return b
}

// pgTimestampFromISO reads a ZonedTimestamp back into timestamptz text.
func pgTimestampFromISO(s string) (string, error) {
	var neg bool
	body := s
	switch {
	case strings.HasPrefix(body, "+"):
		body = body[1:]
	case strings.HasPrefix(body, "-"):
		neg, body = true, body[1:]
	}
	date, clock, ok := strings.Cut(strings.TrimSuffix(body, "Z"), "T")
	if !ok {
		return "", fmt.Errorf("%q is not an ISO timestamp", s)
	}
	c, rest, err := parseDate(date)
	if err != nil || rest != "" {
		return "", fmt.Errorf("%q is not an ISO timestamp", s)
	}
	if neg {
		c.year = -c.year
	}
	if rest, err = parseClock(clock, &c); err != nil || rest != "" {
		return "", fmt.Errorf("%q is not an ISO timestamp", s)
	}
	return pgTimestampText(c.epochMicros(), "+00"), nil
}

// pgArrayQuote quotes an array element as array_out does.
func pgArrayQuote(s string) string {
	need := s == "" || strings.EqualFold(s, "NULL")
	for i := 0; i < len(s) && !need; i++ {
		switch s[i] {
		case '{', '}', ',', '"', '\\', ' ', '\t', '\n', '\r', '\v', '\f':
			need = true
		}
	}
	if !need {
		return s
	}
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + s + `"`
}
