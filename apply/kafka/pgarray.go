package kafka

import (
	"fmt"
	"strings"
)

// parseArray splits PostgreSQL's text output of a one-dimensional array
// ("{1,2,NULL}", "{\"a b\",\"c\\\"d\"}", "[0:1]={x,y}") into its elements;
// a nil element is SQL NULL. Debezium maps arrays to Connect arrays of
// the element type, which cannot hold more than one dimension.
func parseArray(s string) ([]*string, error) {
	if strings.HasPrefix(s, "[") {
		// Explicit bounds: "[lo:hi]={...}".
		i := strings.Index(s, "=")
		if i < 0 {
			return nil, fmt.Errorf("array %q: bounds without '='", s)
		}
		if strings.Count(s[:i], "[") > 1 {
			return nil, fmt.Errorf("array %q has more than one dimension, which Debezium's format cannot carry", s)
		}
		s = s[i+1:]
	}
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return nil, fmt.Errorf("%q is not an array", s)
	}
	body := s[1 : len(s)-1]
	if body == "" {
		return []*string{}, nil
	}
	if body[0] == '{' {
		return nil, fmt.Errorf("array %q has more than one dimension, which Debezium's format cannot carry", s)
	}
	var out []*string
	i := 0
	for {
		if i < len(body) && body[i] == '"' {
			var sb strings.Builder
			i++
			for ; i < len(body) && body[i] != '"'; i++ {
				if body[i] == '\\' && i+1 < len(body) {
					i++
				}
				sb.WriteByte(body[i])
			}
			if i >= len(body) {
				return nil, fmt.Errorf("array %q: unterminated quote", s)
			}
			i++
			v := sb.String()
			out = append(out, &v)
		} else {
			j := i
			for j < len(body) && body[j] != ',' {
				j++
			}
			v := body[i:j]
			if v == "NULL" {
				out = append(out, nil)
			} else {
				out = append(out, &v)
			}
			i = j
		}
		if i == len(body) {
			return out, nil
		}
		if body[i] != ',' {
			return nil, fmt.Errorf("array %q: expected ',' at %d", s, i)
		}
		i++
	}
}
