package apply

import (
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// statements builds the SQL the sink runs for a table. Values always travel
// as untyped text parameters (the server infers each parameter's type from
// its column), so the source's text is parsed once, by the target, with the
// same pinned GUCs: no Go-side decoding, no precision lost (docs/hazards.md 2.7).
type statements struct{}

func qualified(t *promoted.Table) string {
	return pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize()
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// writable reports whether a column can be written with a value: generated
// columns are computed by the target.
func writable(c promoted.Column) bool { return !c.Generated }

// settable reports whether an UPDATE may assign the column: identity
// ALWAYS columns can only be set to DEFAULT, and they are keys in practice.
func settable(c promoted.Column) bool { return !c.Generated && c.Identity != 'a' }

// insert is INSERT of the given columns.
func (statements) insert(t *promoted.Table, cols []int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO ")
	b.WriteString(qualified(t))
	b.WriteString(" (")
	always := false
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(ident(t.Columns[c].Name))
		always = always || t.Columns[c].Identity == 'a'
	}
	b.WriteString(")")
	if always {
		b.WriteString(" OVERRIDING SYSTEM VALUE")
	}
	b.WriteString(" VALUES (")
	for i := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(i+1))
	}
	b.WriteString(")")
	return b.String()
}

// upsert is an INSERT that updates the row when its primary key exists: a
// daemon-filtered table cannot know whether the target holds the row.
func (s statements) upsert(t *promoted.Table, cols []int) string {
	var b strings.Builder
	b.WriteString(s.insert(t, cols))
	b.WriteString(" ON CONFLICT (")
	for i, k := range t.PrimaryKey {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(ident(t.Columns[k].Name))
	}
	b.WriteString(") DO ")
	n := 0
	for _, c := range cols {
		if !settable(t.Columns[c]) || isKey(t.PrimaryKey, c) {
			continue
		}
		if n == 0 {
			b.WriteString("UPDATE SET ")
		} else {
			b.WriteString(", ")
		}
		name := ident(t.Columns[c].Name)
		b.WriteString(name + " = EXCLUDED." + name)
		n++
	}
	if n == 0 {
		b.WriteString("NOTHING")
	} else if g := tenantGuard(t, t.PrimaryKey, qualified(t)); g != "" {
		// The key alone may be another tenant's row in a pooled target:
		// the conflict then updates nothing, and the caller's check of
		// the rows touched stops the move instead of overwriting it.
		b.WriteString(" WHERE" + strings.TrimPrefix(g, " AND"))
	}
	return b.String()
}

// guardedUpsert reports whether upsert's DO UPDATE carries the tenant
// guard, so each row it is given must touch exactly one row.
func guardedUpsert(t *promoted.Table) bool { return !isKey(t.PrimaryKey, t.Tenant) }

// update sets cols (parameters $1..) of the row whose key columns equal the
// following parameters.
func (statements) update(t *promoted.Table, cols, key []int) string {
	var b strings.Builder
	b.WriteString("UPDATE ")
	b.WriteString(qualified(t))
	b.WriteString(" SET ")
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(ident(t.Columns[c].Name) + " = $" + strconv.Itoa(i+1))
	}
	where(&b, t, key, len(cols))
	return b.String()
}

// delete removes the row whose key columns equal the parameters.
func (statements) delete(t *promoted.Table, key []int) string {
	var b strings.Builder
	b.WriteString("DELETE FROM ")
	b.WriteString(qualified(t))
	where(&b, t, key, 0)
	return b.String()
}

func where(b *strings.Builder, t *promoted.Table, key []int, offset int) {
	b.WriteString(" WHERE ")
	for i, k := range key {
		if i > 0 {
			b.WriteString(" AND ")
		}
		b.WriteString(ident(t.Columns[k].Name) + " = $" + strconv.Itoa(offset+i+1))
	}
	b.WriteString(tenantGuard(t, key, ""))
}

// tenantGuard adds the tenant predicate to a WHERE whose key lacks the
// tenant column: the target may be a pooled table (a demotion), where a
// key such as (id) alone can also be another tenant's row, and an UPDATE
// or DELETE of the moving tenant must never reach that row.
func tenantGuard(t *promoted.Table, key []int, alias string) string {
	if isKey(key, t.Tenant) {
		return ""
	}
	if alias != "" {
		alias += "."
	}
	return " AND " + alias + t.TenantPredicate()
}

func isKey(key []int, c int) bool {
	for _, k := range key {
		if k == c {
			return true
		}
	}
	return false
}

// keyText renders a key for error messages: (id, tenant_id)=(5, 7).
func keyText(t *promoted.Table, key []int, row promoted.Row) string {
	names := make([]string, len(key))
	vals := make([]string, len(key))
	for i, k := range key {
		names[i] = t.Columns[k].Name
		if row[k].Kind == promoted.Text {
			vals[i] = string(row[k].Data)
		} else {
			vals[i] = "NULL"
		}
	}
	return "(" + strings.Join(names, ", ") + ")=(" + strings.Join(vals, ", ") + ")"
}
