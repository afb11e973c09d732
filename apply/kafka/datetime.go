package kafka

import (
	"fmt"
	"strconv"
)

// PostgreSQL prints dates and times (DateStyle ISO, TimeZone UTC, the
// GUCs every promoted session pins) as "2016-11-04 13:51:30.123456+00",
// with " BC" after years before 1 AD and years past 9999 in full. Debezium
// turns them into epoch days, microseconds or ISO-8601 strings with
// java.time's proleptic Gregorian calendar; these helpers do the same
// arithmetic without time.Time, whose range and era handling differ.

// civil is a date and time of day as PostgreSQL printed it, with the year
// made astronomical (1 BC is year 0) and the offset, if any, in seconds
// east of UTC.
type civil struct {
	year              int64
	month, day        int64
	hour, min, sec    int64
	micro             int64
	offset            int64
	hasOffset, hasDay bool
}

// epochDays is days since 1970-01-01 in the proleptic Gregorian calendar
// (Howard Hinnant's days_from_civil).
func epochDays(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// fromEpochDays is the inverse of epochDays.
func fromEpochDays(z int64) (y, m, d int64) {
	z += 719468
	era := z / 146097
	if z < 0 && z%146097 != 0 {
		era--
	}
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y = yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = doy - (153*mp+2)/5 + 1
	if mp < 10 {
		m = mp + 3
	} else {
		m = mp - 9
	}
	if m <= 2 {
		y++
	}
	return y, m, d
}

// parseDate reads "YYYY-MM-DD[ BC]" (the year may have more digits).
func parseDate(s string) (civil, string, error) {
	var c civil
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i < 4 || len(s) < i+6 || s[i] != '-' || s[i+3] != '-' {
		return c, "", fmt.Errorf("%q is not a date", s)
	}
	y, err1 := strconv.ParseInt(s[:i], 10, 64)
	m, err2 := strconv.ParseInt(s[i+1:i+3], 10, 64)
	d, err3 := strconv.ParseInt(s[i+4:i+6], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return c, "", fmt.Errorf("%q is not a date", s)
	}
	c.year, c.month, c.day, c.hasDay = y, m, d, true
	return c, s[i+6:], nil
}

// parseClock reads "HH:MM:SS[.ffffff]" and returns the rest.
func parseClock(s string, c *civil) (string, error) {
	if len(s) < 8 || s[2] != ':' || s[5] != ':' {
		return "", fmt.Errorf("%q is not a time of day", s)
	}
	h, err1 := strconv.ParseInt(s[0:2], 10, 64)
	mi, err2 := strconv.ParseInt(s[3:5], 10, 64)
	se, err3 := strconv.ParseInt(s[6:8], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return "", fmt.Errorf("%q is not a time of day", s)
	}
	c.hour, c.min, c.sec = h, mi, se
	rest := s[8:]
	if len(rest) > 0 && rest[0] == '.' {
		j := 1
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		frac := rest[1:j]
		if len(frac) == 0 || len(frac) > 6 {
			return "", fmt.Errorf("%q has a fraction of second PostgreSQL does not print", s)
		}
		f, _ := strconv.ParseInt(frac, 10, 64)
		for k := len(frac); k < 6; k++ {
			f *= 10
		}
		c.micro = f
		rest = rest[j:]
	}
	return rest, nil
}

// parseOffset reads "+HH[:MM[:SS]]" or "-HH...".
func parseOffset(s string, c *civil) (string, error) {
	if len(s) < 3 || (s[0] != '+' && s[0] != '-') {
		return s, nil
	}
	sign := int64(1)
	if s[0] == '-' {
		sign = -1
	}
	h, err := strconv.ParseInt(s[1:3], 10, 64)
	if err != nil {
		return "", fmt.Errorf("%q is not a UTC offset", s)
	}
	off := h * 3600
	rest := s[3:]
	for _, mult := range []int64{60, 1} {
		if len(rest) >= 3 && rest[0] == ':' {
			v, err := strconv.ParseInt(rest[1:3], 10, 64)
			if err != nil {
				return "", fmt.Errorf("%q is not a UTC offset", s)
			}
			off += v * mult
			rest = rest[3:]
		}
	}
	c.offset, c.hasOffset = sign*off, true
	return rest, nil
}

// parseEra applies a trailing " BC".
func parseEra(s string, c *civil) error {
	switch s {
	case "":
		return nil
	case " BC":
		c.year = 1 - c.year
		return nil
	}
	return fmt.Errorf("unexpected %q after a date", s)
}

// parseTimestamp reads timestamp and timestamptz output.
func parseTimestamp(s string, withZone bool) (civil, error) {
	c, rest, err := parseDate(s)
	if err != nil {
		return c, err
	}
	if len(rest) == 0 || rest[0] != ' ' {
		return c, fmt.Errorf("%q is not a timestamp", s)
	}
	if rest, err = parseClock(rest[1:], &c); err != nil {
		return c, err
	}
	if withZone {
		if rest, err = parseOffset(rest, &c); err != nil {
			return c, err
		}
		if !c.hasOffset {
			return c, fmt.Errorf("%q has no UTC offset", s)
		}
	}
	return c, parseEra(rest, &c)
}

// parseTimeOfDay reads time and timetz output.
func parseTimeOfDay(s string, withZone bool) (civil, error) {
	var c civil
	rest, err := parseClock(s, &c)
	if err != nil {
		return c, err
	}
	if withZone {
		if rest, err = parseOffset(rest, &c); err != nil {
			return c, err
		}
	}
	if rest != "" {
		return c, fmt.Errorf("unexpected %q after a time of day", rest)
	}
	return c, nil
}

// epochMicros is the UTC instant of c in microseconds since the epoch.
func (c civil) epochMicros() int64 {
	secs := epochDays(c.year, c.month, c.day)*86400 + c.hour*3600 + c.min*60 + c.sec - c.offset
	return secs*1_000_000 + c.micro
}

// microOfDay is the time of day in microseconds (24:00:00 is allowed).
func (c civil) microOfDay() int64 {
	return ((c.hour*60+c.min)*60+c.sec)*1_000_000 + c.micro - c.offset*1_000_000
}

// appendJavaYear appends a year as java.time's ISO formatters do: at least
// four digits, a '-' before negative years and a '+' before years past
// 9999.
func appendJavaYear(b []byte, y int64) []byte {
	if y > 9999 {
		b = append(b, '+')
	} else if y < 0 {
		b = append(b, '-')
		y = -y
	}
	var buf [20]byte
	d := strconv.AppendInt(buf[:0], y, 10)
	for i := len(d); i < 4; i++ {
		b = append(b, '0')
	}
	return append(b, d...)
}

func append2(b []byte, v int64) []byte {
	return append(b, byte('0'+v/10), byte('0'+v%10))
}

// appendFraction appends nanoseconds as java.time's appendFraction does:
// exactly width digits (1..9), or, with width 0, the fewest digits with
// trailing zeros removed and nothing at all for zero.
func appendFraction(b []byte, nanos int64, width int) []byte {
	s := strconv.FormatInt(nanos, 10)
	for len(s) < 9 {
		s = "0" + s
	}
	if width > 0 {
		return append(append(b, '.'), s[:width]...)
	}
	end := 9
	for end > 0 && s[end-1] == '0' {
		end--
	}
	if end == 0 {
		return b
	}
	return append(append(b, '.'), s[:end]...)
}

// appendISOInstant appends an instant (microseconds since the epoch, UTC)
// as Debezium's ZonedTimestamp does: ISO-8601 date and time in UTC with
// "Z", the fraction of second exactly width digits (the column's
// precision, 6 unless declared), or minimal with width 0.
func appendISOInstant(b []byte, micros int64, width int) []byte {
	days := micros / 86_400_000_000
	rem := micros % 86_400_000_000
	if rem < 0 {
		rem += 86_400_000_000
		days--
	}
	y, m, d := fromEpochDays(days)
	b = appendJavaYear(b, y)
	b = append(b, '-')
	b = append2(b, m)
	b = append(b, '-')
	b = append2(b, d)
	b = append(b, 'T')
	b = appendISOClock(b, rem, width)
	return append(b, 'Z')
}

// appendISOClock appends a time of day (microseconds) as HH:mm:ss[.f].
func appendISOClock(b []byte, micros int64, width int) []byte {
	secs := micros / 1_000_000
	b = append2(b, secs/3600)
	b = append(b, ':')
	b = append2(b, secs/60%60)
	b = append(b, ':')
	b = append2(b, secs%60)
	return appendFraction(b, micros%1_000_000*1000, width)
}
