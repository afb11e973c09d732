package verify

import (
	"context"
	"strings"
	"testing"

	"github.com/promoted/promoted"
)

// The words table has a text tenant and a text key of mixed case and
// accents. The target's key column sorts with ICU, the source's in byte
// order (the cluster's C.UTF-8), so the two sides disagree on key ranges.
const (
	wordsSourceDDL = `CREATE SCHEMA pool;
	CREATE TABLE pool.words (tenant_id text NOT NULL, word text NOT NULL, n int, PRIMARY KEY (tenant_id, word))`
	wordsTargetDDL = `CREATE SCHEMA t7;
	CREATE TABLE t7.words (n int, word text COLLATE "und-x-icu" NOT NULL, tenant_id text NOT NULL,
	    PRIMARY KEY (tenant_id, word))`
	fillWords = `INSERT INTO {rel} (tenant_id, word, n)
	SELECT $1::text, (ARRAY['apple', 'Apple', 'Émile', 'emile', 'Zoë', 'zoe', 'ångström', 'Ångström',
	    'straße', 'STRASSE', 'ñandú', 'Ñandú', 'a b', 'a,b', 'Ωmega', 'a"b'])[g % 16 + 1] || '-' || g, g
	FROM generate_series(1, $2::int) AS g`
)

func wordsTable() *promoted.Table {
	return &promoted.Table{Schema: "pool", Name: "words", TargetSchema: "t7", TargetName: "words",
		Columns: []promoted.Column{
			{Name: "tenant_id", Type: "text", TypeOID: 25, NotNull: true},
			{Name: "word", Type: "text", TypeOID: 25, NotNull: true},
			{Name: "n", Type: "integer", TypeOID: 23},
		},
		PrimaryKey: []int{0, 1}, Tenant: 0, ServerFilter: true, TenantLiteral: "Acme"}
}

// Text keys of mixed case and accents are named exactly, although the
// target orders them differently from the source; the other tenant "acme"
// differs from "Acme" only by case and must not matter.
func TestTextKeysUnderAnotherCollation(t *testing.T) {
	srcOwner, src, _ := ownedDB(t)
	dstOwner, dst, _ := ownedDB(t)
	mustExec(t, srcOwner, wordsSourceDDL)
	mustExec(t, dstOwner, wordsTargetDDL)
	for _, q := range []struct {
		conn execer
		rel  string
	}{{srcOwner, "pool.words"}, {dstOwner, "t7.words"}} {
		mustExec(t, q.conn, strings.ReplaceAll(fillWords, "{rel}", q.rel), "Acme", 4000)
	}
	mustExec(t, srcOwner, strings.ReplaceAll(fillWords, "{rel}", "pool.words"), "acme", 500)
	tbl := wordsTable()

	res := compare(t, src, dst, Options{}, tbl)
	if !res.Equal() || res.Tables[0].SourceRows != 4000 {
		t.Fatalf("identical words differ: %s", res.Summary())
	}

	mustExec(t, dst, `DELETE FROM t7.words WHERE tenant_id = 'Acme' AND word = 'Émile-2'`)
	mustExec(t, dst, `UPDATE t7.words SET n = -n WHERE tenant_id = 'Acme' AND word IN ('Zoë-4', 'a"b-15', 'Ωmega-3998')`)
	mustExec(t, dst, `INSERT INTO t7.words VALUES (1, 'ñandú-99999', 'Acme'), (2, 'APPLE-1', 'Acme')`)
	res = compare(t, src, dst, Options{LeafRows: 16, MaxKeys: 10}, tbl)
	r := res.Tables[0]
	wantDiff(t, r, []string{"(Acme,Émile-2)"}, []string{"(Acme,ñandú-99999)", "(Acme,APPLE-1)"},
		[]string{"(Acme,Zoë-4)", `(Acme,"a""b-15")`, "(Acme,Ωmega-3998)"})
	if !r.OrderDiffers {
		t.Errorf("the differing key order was not noticed")
	}
}

// The feelings table's key includes an enum, a user type whose name
// (format_type) is the source schema's: the target's enum is another type
// in another schema, so key parameters must be left for the server to
// type. Source and target are schemas of one database.
const feelingsDDL = `CREATE SCHEMA pool; CREATE SCHEMA t7;
	CREATE TYPE pool.mood AS ENUM ('sad', 'ok', 'happy');
	CREATE TYPE t7.mood AS ENUM ('sad', 'ok', 'happy');
	CREATE TABLE pool.feelings (tenant_id int NOT NULL, mood pool.mood NOT NULL, n int NOT NULL, note text,
	    PRIMARY KEY (tenant_id, mood, n));
	CREATE TABLE t7.feelings (note text, n int NOT NULL, mood t7.mood NOT NULL, tenant_id int NOT NULL,
	    PRIMARY KEY (tenant_id, mood, n));
	INSERT INTO pool.feelings SELECT t, m, g, 'note ' || g
	    FROM unnest(ARRAY[7, 8]) AS t, unnest(enum_range(NULL::pool.mood)) AS m, generate_series(1, 2000) AS g;
	INSERT INTO t7.feelings (tenant_id, mood, n, note) SELECT tenant_id, mood::text::t7.mood, n, note
	    FROM pool.feelings WHERE tenant_id = 7`

func feelingsTable(moodOID uint32) *promoted.Table {
	return &promoted.Table{Schema: "pool", Name: "feelings", TargetSchema: "t7", TargetName: "feelings",
		Columns: []promoted.Column{
			{Name: "tenant_id", Type: "integer", TypeOID: 23, NotNull: true},
			{Name: "mood", Type: "pool.mood", TypeOID: moodOID, NotNull: true},
			{Name: "n", Type: "integer", TypeOID: 23, NotNull: true},
			{Name: "note", Type: "text", TypeOID: 25},
		},
		PrimaryKey: []int{0, 1, 2}, Tenant: 0, ServerFilter: true, TenantLiteral: "7"}
}

func TestUserTypeKeys(t *testing.T) {
	owner, conn, _ := ownedDB(t)
	mustExec(t, owner, feelingsDDL)
	var oid uint32
	if err := conn.QueryRow(context.Background(), `SELECT 'pool.mood'::regtype::oid`).Scan(&oid); err != nil || oid < 16384 {
		t.Fatalf("mood oid %d: %v", oid, err)
	}
	tbl := feelingsTable(oid)
	if res := compare(t, conn, conn, Options{}, tbl); !res.Equal() || res.Rows != 6000 {
		t.Fatalf("identical feelings differ: %s", res.Summary())
	}
	// The target is read through a transaction on the source's own
	// connection: the sides must take turns.
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	mustExec(t, tx, `DELETE FROM t7.feelings WHERE tenant_id = 7 AND mood = 'happy' AND n = 5;
	    UPDATE t7.feelings SET note = NULL WHERE tenant_id = 7 AND mood = 'ok' AND n = 1000;
	    INSERT INTO t7.feelings (tenant_id, mood, n) VALUES (7, 'sad', 99999)`)
	res := compare(t, conn, tx, Options{LeafRows: 64}, tbl)
	wantDiff(t, res.Tables[0], []string{"(7,happy,5)"}, []string{"(7,sad,99999)"}, []string{"(7,ok,1000)"})
	if res.Tables[0].Ranges == 0 {
		t.Errorf("no key range was compared")
	}
}

// Tenant ids that are awkward as SQL text (a percent sign, quotes, dollar
// quotes) select exactly the tenant's rows in every comparison: a missing
// row is caught by the counts of CompareKeys and named by Compare. (A %
// once turned the counts under the fence into 0 = 0.)
func TestAwkwardTenantValues(t *testing.T) {
	for _, tenant := range []string{"100%", "50%d%s", "it's", "a$$b", "$promoted$"} {
		t.Run(tenant, func(t *testing.T) {
			srcOwner, src, _ := ownedDB(t)
			dstOwner, dst, _ := ownedDB(t)
			mustExec(t, srcOwner, wordsSourceDDL)
			mustExec(t, dstOwner, wordsTargetDDL)
			for _, q := range []struct {
				conn execer
				rel  string
			}{{srcOwner, "pool.words"}, {dstOwner, "t7.words"}} {
				mustExec(t, q.conn, strings.ReplaceAll(fillWords, "{rel}", q.rel), tenant, 300)
			}
			mustExec(t, srcOwner, strings.ReplaceAll(fillWords, "{rel}", "pool.words"), "other", 50)
			tbl := wordsTable()
			tbl.TenantLiteral = tenant
			if res := compare(t, src, dst, Options{}, tbl); !res.Equal() || res.Tables[0].SourceRows != 300 {
				t.Fatalf("identical rows of tenant %q: %s (%d source rows)", tenant, res.Summary(), res.Tables[0].SourceRows)
			}
			mustExec(t, dst, `DELETE FROM t7.words WHERE tenant_id = $1 AND word = 'apple-16'`, tenant)
			r, err := CompareKeys(context.Background(), src, dst, tbl, [][]string{{tenant, "zoe-5"}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if r.SourceRows != 300 || r.TargetRows != 299 || r.Equal() {
				t.Errorf("counts %d/%d equal=%v: want 300/299 and a difference", r.SourceRows, r.TargetRows, r.Equal())
			}
			res := compare(t, src, dst, Options{}, tbl)
			wantDiff(t, res.Tables[0], []string{"(" + quoteKey(tenant) + ",apple-16)"}, nil, nil)
		})
	}
}

// quoteKey is a text key as a row's text form prints it.
func quoteKey(s string) string {
	if strings.ContainsAny(s, `"\,() `) || s == "" {
		return `"` + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `"`, `""`) + `"`
	}
	return s
}
