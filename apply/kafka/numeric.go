package kafka

import (
	"encoding/base64"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// Numbers: numeric in the three decimal.handling.mode renderings, and
// money. Most numeric values have at most 18 significant digits and take
// the int64 path (appendShortDecimal); the big.Int path remains for the
// rest and for every error.

// splitDecimal reads numeric output ("-12.340") into sign, digits without
// the point, and the number of fractional digits.
func splitDecimal(s string) (neg bool, digits string, scale int, err error) {
	if strings.HasPrefix(s, "-") {
		neg, s = true, s[1:]
	}
	intPart, frac, _ := strings.Cut(s, ".")
	if intPart == "" && frac == "" {
		return false, "", 0, fmt.Errorf("%q is not a number", s)
	}
	for _, p := range []string{intPart, frac} {
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return false, "", 0, fmt.Errorf("%q is not a number", s)
			}
		}
	}
	return neg, intPart + frac, len(frac), nil
}

func appendUnscaled(b []byte, neg bool, digits string) []byte {
	x, _ := new(big.Int).SetString(strings.TrimLeft(digits, "0")+"0", 10)
	x.Div(x, big.NewInt(10))
	if neg {
		x.Neg(x)
	}
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, javaBigIntegerBytes(x))
	return append(b, '"')
}

// appendDecimal follows PostgresValueConverter.convertDecimal: NaN and the
// infinities only exist for decimal.handling.mode string (as the names of
// SpecialValueDecimal's constants) and double; precise refuses them, as
// Debezium's connector does.
func (c *codec) appendDecimal(b []byte, s string) ([]byte, error) {
	special := map[string][2]string{
		"NaN":       {"NAN", "NaN"},
		"Infinity":  {"POSITIVE_INFINITY", "Infinity"},
		"-Infinity": {"NEGATIVE_INFINITY", "-Infinity"},
	}
	if sp, ok := special[s]; ok {
		switch c.conv {
		case convDecimalString:
			return appendJSONString(b, sp[0]), nil
		case convDecimalDouble:
			return appendJSONString(b, sp[1]), nil
		}
		return b, fmt.Errorf("numeric %s cannot be expressed with --kafka-decimal-handling precise (Debezium refuses it too): use string or double", s)
	}
	if c.conv == convDecimalDouble {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return b, fmt.Errorf("%q is not a number", s)
		}
		return appendJavaFloat(b, f, 64), nil
	}
	neg, digits, scale, err := splitDecimal(s)
	if err != nil {
		return b, err
	}
	switch c.conv {
	case convDecimalString:
		return appendJSONString(b, s), nil
	case convDecimal:
		if scale > c.scale {
			return b, fmt.Errorf("%q has more fractional digits than the column's scale %d", s, c.scale)
		}
		return appendUnscaled(b, neg, digits+strings.Repeat("0", c.scale-scale)), nil
	}
	// VariableScaleDecimal: BigDecimal.stripTrailingZeros, never a
	// negative scale.
	for scale > 0 && digits[len(digits)-1] == '0' {
		digits, scale = digits[:len(digits)-1], scale-1
	}
	if strings.Trim(digits, "0") == "" {
		neg, scale = false, 0
	}
	b = append(b, `{"scale":`...)
	b = strconv.AppendInt(b, int64(scale), 10)
	b = append(b, `,"value":`...)
	b = appendUnscaled(b, neg, digits)
	return append(b, '}'), nil
}

// appendShortDecimal is appendDecimal for precise decimals of at most 18
// significant digits, the usual case, computed in an int64 instead of a
// big.Int; ok false leaves anything else (and every error) to
// appendDecimal.
func (c *codec) appendShortDecimal(b, text []byte) ([]byte, bool) {
	if c.conv != convDecimal && c.conv != convVarDecimal {
		return b, false
	}
	neg := len(text) > 0 && text[0] == '-'
	if neg {
		text = text[1:]
	}
	var v int64
	digits, scale, sig := 0, 0, 0
	point := false
	for _, ch := range text {
		if ch == '.' && !point {
			point = true
			continue
		}
		if ch < '0' || ch > '9' {
			return b, false
		}
		digits++
		if point {
			scale++
		}
		if v == 0 && ch == '0' {
			continue // a leading zero
		}
		if sig++; sig > 18 {
			return b, false
		}
		v = v*10 + int64(ch-'0')
	}
	if digits == 0 {
		return b, false
	}
	if c.conv == convDecimal {
		if scale > c.scale || sig+c.scale-scale > 18 {
			return b, false
		}
		for ; scale < c.scale; scale++ {
			v *= 10
		}
		if neg {
			v = -v
		}
		b = append(b, '"')
		return append(appendJavaLongBytes(b, v), '"'), true
	}
	// VariableScaleDecimal: BigDecimal.stripTrailingZeros, never a
	// negative scale.
	for scale > 0 && v%10 == 0 {
		v, scale = v/10, scale-1
	}
	if v == 0 {
		neg, scale = false, 0
	}
	if neg {
		v = -v
	}
	b = append(b, `{"scale":`...)
	b = strconv.AppendInt(b, int64(scale), 10)
	b = append(b, `,"value":"`...)
	return append(appendJavaLongBytes(b, v), '"', '}'), true
}

// appendJavaLongBytes appends, in base64, BigInteger.valueOf(v).toByteArray():
// the shortest big-endian two's complement of v.
func appendJavaLongBytes(b []byte, v int64) []byte {
	n := 1
	for n < 8 && (v < -(1<<(8*n-1)) || v >= 1<<(8*n-1)) {
		n++
	}
	var buf [8]byte
	for i := 0; i < n; i++ {
		buf[i] = byte(v >> (8 * (n - 1 - i)))
	}
	return base64.StdEncoding.AppendEncode(b, buf[:n])
}

// appendMoney reads money's output under lc_monetary C ("$1,234.11",
// "-$1,234.11") as AbstractColumnValue.asMoney does, at Debezium's
// money.fraction.digits (2).
func (c *codec) appendMoney(b []byte, s string) ([]byte, error) {
	neg := strings.HasPrefix(s, "-") || strings.HasPrefix(s, "(")
	clean := strings.NewReplacer("-", "", "(", "", ")", "", "$", "", ",", "").Replace(s)
	_, digits, scale, err := splitDecimal(clean)
	if err != nil {
		return b, fmt.Errorf("%q is not money", s)
	}
	if scale > 2 {
		return b, fmt.Errorf("%q has more than 2 fractional digits", s)
	}
	digits += strings.Repeat("0", 2-scale)
	switch c.conv {
	case convMoneyString:
		text := strings.TrimLeft(digits[:len(digits)-2], "0")
		if text == "" {
			text = "0"
		}
		text += "." + digits[len(digits)-2:]
		if neg && strings.Trim(digits, "0") != "" {
			text = "-" + text
		}
		return appendJSONString(b, text), nil
	case convMoneyDouble:
		f, _ := strconv.ParseFloat(clean, 64)
		if neg {
			f = -f
		}
		return appendJavaFloat(b, f, 64), nil
	}
	return appendUnscaled(b, neg, digits), nil
}

// shortInt reports whether text is an integer of at most 18 digits
// (which int64 holds), checked without strconv.
func shortInt(text []byte) bool {
	if len(text) > 0 && text[0] == '-' {
		text = text[1:]
	}
	if len(text) == 0 || len(text) > 18 {
		return false
	}
	for _, ch := range text {
		if ch < '0' || ch > '9' {
			return false
		}
	}
	return true
}
