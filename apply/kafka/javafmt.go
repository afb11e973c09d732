package kafka

import (
	"math"
	"math/big"
	"strconv"
	"unicode/utf8"
)

// The records must be byte for byte what Kafka Connect's JsonConverter
// (Jackson) writes for Debezium's Java values, so consumers that compare,
// hash or deduplicate records see no difference. This file holds the few
// Java and Jackson formatting rules that matter for that.

const hexUpper = "0123456789ABCDEF"

// appendJSONString appends s as a JSON string the way Jackson writes it:
// quote and backslash escaped, \b \t \n \f \r short-escaped, other control
// characters as \u00XX (upper-case hex), everything else (non-ASCII, '/',
// '<', DEL) verbatim.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"':
			b = append(b, '\\', '"')
		case '\\':
			b = append(b, '\\', '\\')
		case '\b':
			b = append(b, '\\', 'b')
		case '\t':
			b = append(b, '\\', 't')
		case '\n':
			b = append(b, '\\', 'n')
		case '\f':
			b = append(b, '\\', 'f')
		case '\r':
			b = append(b, '\\', 'r')
		default:
			b = append(b, '\\', 'u', '0', '0', hexUpper[c>>4], hexUpper[c&0xF])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendJSONBytesString is appendJSONString for a byte slice that holds
// UTF-8 text (PostgreSQL's text output in a UTF8 database).
func appendJSONBytesString(b []byte, s []byte) []byte {
	return appendJSONString(b, string(s))
}

// validUTF8 reports whether text can be written as a JSON string.
func validUTF8(s []byte) bool { return utf8.Valid(s) }

// appendJavaFloat appends a float as Jackson writes a Java double (bits
// 64) or float (bits 32): Double.toString / Float.toString with the
// shortest digits that round-trip (JDK 19 and later), in plain notation
// for magnitudes in [1e-3, 1e7) and computerized scientific notation
// ("1.0E7", "1.5E-5") otherwise. NaN and the infinities are written as
// the strings Jackson quotes them as by default.
func appendJavaFloat(b []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(b, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(b, `"-Infinity"`...)
	}
	return append(b, javaFloatString(f, bits)...)
}

// javaFloatString is Java's Double.toString (bits 64) or Float.toString
// (bits 32) of a finite value.
func javaFloatString(f float64, bits int) string {
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	neg := f < 0
	abs := math.Abs(f)
	// d.dddde±XX with the shortest digits.
	e := strconv.FormatFloat(abs, 'e', -1, bits)
	if len(e) > 1 && e[1] == 'e' {
		// One digit is enough: Java then picks the closest of the
		// two-digit decimals instead (4.9E-324, not 5E-324); its
		// trailing zero is dropped again below.
		e = strconv.FormatFloat(abs, 'e', 1, bits)
	}
	mant, expPart := e, ""
	for i := 0; i < len(e); i++ {
		if e[i] == 'e' {
			mant, expPart = e[:i], e[i+1:]
			break
		}
	}
	exp, _ := strconv.Atoi(expPart)
	digits := make([]byte, 0, len(mant))
	for i := 0; i < len(mant); i++ {
		if mant[i] != '.' {
			digits = append(digits, mant[i])
		}
	}
	for len(digits) > 1 && digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
	}
	var out []byte
	if neg {
		out = append(out, '-')
	}
	if abs >= 1e-3 && abs < 1e7 {
		if exp >= 0 {
			if len(digits) <= exp+1 {
				out = append(out, digits...)
				for i := len(digits); i < exp+1; i++ {
					out = append(out, '0')
				}
				out = append(out, '.', '0')
			} else {
				out = append(out, digits[:exp+1]...)
				out = append(out, '.')
				out = append(out, digits[exp+1:]...)
			}
		} else {
			out = append(out, '0', '.')
			for i := 0; i < -exp-1; i++ {
				out = append(out, '0')
			}
			out = append(out, digits...)
		}
		return string(out)
	}
	out = append(out, digits[0], '.')
	if len(digits) > 1 {
		out = append(out, digits[1:]...)
	} else {
		out = append(out, '0')
	}
	out = append(out, 'E')
	out = strconv.AppendInt(out, int64(exp), 10)
	return string(out)
}

// javaBigIntegerBytes is Java's BigInteger.toByteArray: the minimal
// big-endian two's-complement bytes of x, as Kafka Connect's Decimal and
// Debezium's VariableScaleDecimal carry an unscaled value.
func javaBigIntegerBytes(x *big.Int) []byte {
	if x.Sign() >= 0 {
		m := x.Bytes()
		if len(m) == 0 || m[0]&0x80 != 0 {
			m = append([]byte{0}, m...)
		}
		return m
	}
	// -x - 1, inverted, is the two's complement of x.
	m := new(big.Int).Neg(x)
	m.Sub(m, big.NewInt(1))
	bs := m.Bytes()
	for i := range bs {
		bs[i] = ^bs[i]
	}
	if len(bs) == 0 || bs[0]&0x80 == 0 {
		bs = append([]byte{0xff}, bs...)
	}
	return bs
}

// javaStringHash is Java's String.hashCode over UTF-16 code units.
func javaStringHash(s string) int32 {
	var h int32
	for _, r := range s {
		if r >= 0x10000 {
			r -= 0x10000
			h = 31*h + int32(0xD800+(r>>10))
			h = 31*h + int32(0xDC00+(r&0x3FF))
			continue
		}
		h = 31*h + int32(r)
	}
	return h
}

// javaHashMapOrder returns the order in which a java.util.HashMap filled
// with keys (in this insertion order) iterates them: by bucket, and by
// insertion within a bucket. Debezium's END transaction record lists its
// per-table counts in that order.
func javaHashMapOrder(keys []string) []string {
	capacity := 16
	for float64(len(keys)) > 0.75*float64(capacity) {
		capacity *= 2
	}
	type entry struct {
		key    string
		bucket int
	}
	entries := make([]entry, len(keys))
	for i, k := range keys {
		h := uint32(javaStringHash(k))
		h ^= h >> 16
		entries[i] = entry{k, int(h & uint32(capacity-1))}
	}
	out := make([]string, 0, len(keys))
	for bucket := 0; bucket < capacity; bucket++ {
		for _, e := range entries {
			if e.bucket == bucket {
				out = append(out, e.key)
			}
		}
	}
	return out
}
