package testenv

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// CompareT is what CompareTenant reports through.
type CompareT interface {
	TB
	Errorf(format string, args ...any)
}

// CompareTenant checks, table by table and row by row (rows as text under
// the pinned session settings of s and d), that the target holds exactly
// the tenant's source rows and no row of another tenant. Either session may
// be a transaction holding an older snapshot.
func CompareTenant(t CompareT, ctx context.Context, s, d *pgx.Conn, srcSchema, dstSchema, column, tenant string, tables []string) {
	t.Helper()
	compareTenant(t, ctx, s, d, srcSchema, dstSchema, column, tenant, tables, false)
}

// ComparePooledTenant is CompareTenant into a pooled target, whose other
// tenants' rows are not the comparison's business.
func ComparePooledTenant(t CompareT, ctx context.Context, s, d *pgx.Conn, srcSchema, dstSchema, column, tenant string, tables []string) {
	t.Helper()
	compareTenant(t, ctx, s, d, srcSchema, dstSchema, column, tenant, tables, true)
}

func compareTenant(t CompareT, ctx context.Context, s, d *pgx.Conn, srcSchema, dstSchema, column, tenant string, tables []string, pooled bool) {
	t.Helper()
	col := pgx.Identifier{column}.Sanitize()
	for _, table := range tables {
		q := func(schema string) string {
			return fmt.Sprintf(`SELECT x::text FROM %s x WHERE %s = $1 ORDER BY 1`, pgx.Identifier{schema, table}.Sanitize(), col)
		}
		a := TextRows(t, ctx, s, q(srcSchema), tenant)
		b := TextRows(t, ctx, d, q(dstSchema), tenant)
		if len(a) == 0 {
			t.Errorf("%s: no rows of tenant %q on the source: the comparison proves nothing", table, tenant)
		}
		if len(a) != len(b) {
			t.Errorf("%s: source has %d rows of tenant %q, target %d", table, len(a), tenant, len(b))
		}
		diffs := 0
		for i := 0; i < len(a) || i < len(b); i++ {
			var x, y string
			if i < len(a) {
				x = a[i]
			}
			if i < len(b) {
				y = b[i]
			}
			if x != y {
				if diffs++; diffs <= 3 {
					t.Errorf("%s row %d differs:\nsource %.300s\ntarget %.300s", table, i, x, y)
				}
			}
		}
		if pooled {
			continue // other tenants' rows belong in a pooled target
		}
		var others int
		if err := d.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s WHERE %s IS DISTINCT FROM $1`, pgx.Identifier{dstSchema, table}.Sanitize(), col), tenant).Scan(&others); err != nil {
			t.Fatalf("%v", err)
		}
		if others != 0 {
			t.Errorf("%s: target holds %d rows of other tenants", table, others)
		}
	}
}
