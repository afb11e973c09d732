package promoted

import (
	"strings"
	"testing"
)

// The tenant predicate carries any tenant value as data: quotes, percent
// signs and dollar quotes included.
func TestTenantPredicate(t *testing.T) {
	for _, tc := range []struct {
		literal, typ string
		oid          uint32
		want         string
	}{
		{"42", "bigint", 20, `"tenant_id" = '42'::bigint`},
		{"it's", "text", 25, `"tenant_id" = 'it''s'::text`},
		{"100%", "text", 25, `"tenant_id" = '100%'::text`},
		{"$$x$$", "text", 25, `"tenant_id" = '$$x$$'::text`},
		{"happy", "mood", 16400, `"tenant_id" = 'happy'`},
	} {
		tbl := &Table{Columns: []Column{{Name: "tenant_id", Type: tc.typ, TypeOID: tc.oid}}, TenantLiteral: tc.literal}
		if got := tbl.TenantPredicate(); got != tc.want {
			t.Errorf("tenant %q: %s, want %s", tc.literal, got, tc.want)
		}
	}
}

// A dollar-quoted body can hold any text, the tag itself included.
func TestDollarQuote(t *testing.T) {
	for _, body := range []string{"plain", "a $promoted$ b", "ends with $promoted", "$promoted$$promoted1$", "x$", ""} {
		q := DollarQuote(body)
		end := strings.Index(q[1:], "$") + 2
		tag := q[:end]
		if !strings.HasSuffix(q, tag) || q[len(tag):len(q)-len(tag)] != body {
			t.Errorf("DollarQuote(%q) = %q: does not round-trip", body, q)
		}
		if strings.Index(q[len(tag):], tag) != len(body) {
			t.Errorf("DollarQuote(%q) = %q: the tag %s closes early", body, q, tag)
		}
	}
}
