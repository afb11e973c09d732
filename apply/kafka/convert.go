package kafka

import (
	"fmt"
	"strconv"
	"strings"
)

// Infinite dates and timestamps: Debezium maps 'infinity' to the values
// PgJDBC uses for it (PGStatement.DATE_POSITIVE_INFINITY, in
// microseconds) and, for dates, to the LocalDate it parses
// "-5877611-06-21" / "-5877611-06-22" into.
const (
	microsPosInfinity = 9223372036825200000
	microsNegInfinity = -9223372036832400000
)

func (c *codec) appendTemporalOrNumeric(b []byte, s string) ([]byte, error) {
	switch c.conv {
	case convDecimal, convVarDecimal, convDecimalString, convDecimalDouble:
		return c.appendDecimal(b, s)
	case convMoney, convMoneyString, convMoneyDouble:
		return c.appendMoney(b, s)
	case convZonedTimestamp:
		switch s {
		case "infinity", "-infinity":
			return appendJSONString(b, s), nil
		}
		t, err := parseTimestamp(s, true)
		if err != nil {
			return b, err
		}
		b = append(b, '"')
		b = appendISOInstant(b, t.epochMicros(), c.scale)
		return append(b, '"'), nil
	case convMicroTimestamp, convMilliTimestamp:
		var micros int64
		switch s {
		case "infinity":
			micros = microsPosInfinity
		case "-infinity":
			micros = microsNegInfinity
		default:
			t, err := parseTimestamp(s, false)
			if err != nil {
				return b, err
			}
			micros = t.epochMicros()
		}
		if c.conv == convMilliTimestamp {
			micros = floorDiv(micros, 1000)
		}
		return strconv.AppendInt(b, micros, 10), nil
	case convDate:
		var days int64
		switch s {
		case "infinity":
			days = epochDays(-5877611, 6, 21)
		case "-infinity":
			days = epochDays(-5877611, 6, 22)
		default:
			d, rest, err := parseDate(s)
			if err == nil {
				err = parseEra(rest, &d)
			}
			if err != nil {
				return b, err
			}
			days = epochDays(d.year, d.month, d.day)
		}
		// Date.toEpochDay is an int: Java narrows the long.
		return strconv.AppendInt(b, int64(int32(days)), 10), nil
	case convMicroTime, convMilliTime:
		t, err := parseTimeOfDay(s, false)
		if err != nil {
			return b, err
		}
		v := t.microOfDay()
		if c.conv == convMilliTime {
			v /= 1000
		}
		return strconv.AppendInt(b, v, 10), nil
	case convZonedTime:
		t, err := parseTimeOfDay(s, true)
		if err != nil {
			return b, err
		}
		v := t.microOfDay() % 86_400_000_000
		if v < 0 {
			v += 86_400_000_000
		}
		b = append(b, '"')
		b = appendISOClock(b, v, 0)
		return append(b, 'Z', '"'), nil
	case convInterval:
		v, err := intervalMicros(s)
		if err != nil {
			return b, err
		}
		return strconv.AppendInt(b, v, 10), nil
	}
	return b, fmt.Errorf("no conversion for type %s", c.typ)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// intervalMicros follows PGInterval's parsing of the postgres
// IntervalStyle and MicroDuration.durationMicros with Debezium's average
// month of 365.25/12 days, in the same floating-point steps.
func intervalMicros(s string) (int64, error) {
	var years, months, days, hours, minutes int64
	var seconds float64
	fields := strings.Fields(s)
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		if strings.Contains(f, ":") {
			neg := strings.HasPrefix(f, "-")
			f = strings.TrimLeft(f, "+-")
			var t civil
			rest, err := parseClockLoose(f, &t)
			if err != nil || rest != "" {
				return 0, fmt.Errorf("interval %q: bad time %q", s, fields[i])
			}
			h, m, sec := t.hour, t.min, float64(t.sec)+float64(t.micro)/1e6
			if neg {
				h, m, sec = -h, -m, -sec
			}
			hours, minutes, seconds = hours+h, minutes+m, seconds+sec
			continue
		}
		if i+1 >= len(fields) {
			return 0, fmt.Errorf("interval %q: %q has no unit", s, f)
		}
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("interval %q: bad number %q", s, f)
		}
		i++
		switch strings.TrimSuffix(fields[i], "s") {
		case "year":
			years += n
		case "mon":
			months += n
		case "day":
			days += n
		default:
			return 0, fmt.Errorf("interval %q: unknown unit %q", s, fields[i])
		}
	}
	const daysPerMonthAvg = 365.25 / 12.0
	numberOfDays := float64(int32(years*12+months))*daysPerMonthAvg + float64(days)
	numberOfSeconds := (((numberOfDays*24+float64(hours))*60)+float64(minutes))*60 + seconds
	return int64(numberOfSeconds * 1e6), nil
}

// parseClockLoose is parseClock for interval times, whose hours may have
// more than two digits.
func parseClockLoose(s string, c *civil) (string, error) {
	h, rest, ok := strings.Cut(s, ":")
	if !ok {
		return "", fmt.Errorf("%q is not a time", s)
	}
	hv, err := strconv.ParseInt(h, 10, 64)
	if err != nil {
		return "", err
	}
	rest, err = parseClock("00:"+rest, c)
	c.hour = hv
	return rest, err
}
