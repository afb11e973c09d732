package stream

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/jackc/pglogrepl"
)

// TestParseMessageMatchesPglogrepl decodes every row change PostgreSQL
// sent in the captures (inserts, updates with and without the old key,
// deletes, NULLs, unchanged TOAST values) with promoted's decoder and
// with pglogrepl's: they must agree field by field. Every truncation of
// each message must be an error, not a panic or a shorter row.
func TestParseMessageMatchesPglogrepl(t *testing.T) {
	seen := map[byte]int{}
	for _, c := range captures {
		msgs, err := readCapture(filepath.Join("testdata", "pgoutput", c.name+".bin"))
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range msgs {
			if m[0] != 'I' && m[0] != 'U' && m[0] != 'D' {
				continue
			}
			seen[m[0]]++
			want, err := pglogrepl.Parse(m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseMessage(m)
			if err != nil {
				t.Fatalf("%s message %d (%c): %v", c.name, i, m[0], err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s message %d (%c): decoded\n%#v\nwant\n%#v", c.name, i, m[0], got, want)
			}
			for n := 1; n < len(m); n++ {
				if _, err := parseMessage(m[:n]); err == nil {
					t.Errorf("%s message %d (%c) cut to %d of %d bytes decoded without an error", c.name, i, m[0], n, len(m))
				}
			}
		}
	}
	for _, k := range []byte{'I', 'U', 'D'} {
		if seen[k] == 0 {
			t.Errorf("the captures hold no %c message", k)
		}
	}
	// The decoded columns must not alias the receive buffer, which the
	// next message overwrites.
	for _, c := range captures {
		msgs, _ := readCapture(filepath.Join("testdata", "pgoutput", c.name+".bin"))
		for _, m := range msgs {
			if m[0] != 'I' {
				continue
			}
			buf := append([]byte(nil), m...)
			got, err := parseMessage(buf)
			if err != nil {
				t.Fatal(err)
			}
			before := string(got.(*pglogrepl.InsertMessage).Tuple.Columns[1].Data)
			for i := range buf {
				buf[i] = 0
			}
			if after := string(got.(*pglogrepl.InsertMessage).Tuple.Columns[1].Data); after != before {
				t.Fatalf("a decoded column changed with the receive buffer: %q became %q", before, after)
			}
			return
		}
	}
}

// TestParseMessageRefusesUnknownKinds: a tuple kind or column kind
// pgoutput does not send is an error naming it.
func TestParseMessageRefusesUnknownKinds(t *testing.T) {
	for _, m := range [][]byte{
		{'I', 0, 0, 0, 1, 'X', 0, 0},
		{'D', 0, 0, 0, 1, 'N', 0, 0},
		{'U', 0, 0, 0, 1, 'K', 0, 0, 'Z', 0, 0},
		{'I', 0, 0, 0, 1, 'N', 0, 1, 'q'},
	} {
		if _, err := parseMessage(m); err == nil {
			t.Errorf("%q decoded without an error", m)
		}
	}
}
