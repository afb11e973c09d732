package job

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/promoted/promoted/stream"
)

// kindsSchema has a column of every type family a tenant's rows carry, the
// user-defined ones included (an enum, an array of it, a domain, a
// composite), in a schema that is not public.
const kindsSchema = `
CREATE SCHEMA app;
SET search_path = app;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE addr AS (street text, zip int);
CREATE TABLE kinds (
    tenant_id int NOT NULL,
    id int NOT NULL,
    small int,
    big text,
    j jsonb,
    js json,
    ints int[],
    texts text[],
    moods mood[],
    n numeric,
    n2 numeric(20,10),
    ts timestamptz,
    tsl timestamp,
    d date,
    iv interval,
    b bytea,
    u uuid,
    e mood,
    p posint,
    a addr,
    f8 float8,
    f4 real,
    ok boolean,
    c3 char(3),
    v5 varchar(5),
    ip inet,
    m money,
    PRIMARY KEY (tenant_id, id)
);
CREATE FUNCTION big(seed int) RETURNS text LANGUAGE sql AS
  $$ SELECT string_agg(md5(seed::text || i::text), '') FROM generate_series(1, 300) i $$;
CREATE FUNCTION add_kinds(t int, first int, last int) RETURNS void LANGUAGE sql AS $$
INSERT INTO kinds SELECT t, g, g,
    CASE WHEN g % 3 = 0 THEN big(g) ELSE 'short ' || g END,
    jsonb_build_object('g', g, 'arr', jsonb_build_array(1, 'two', NULL), 'u', 'ü'),
    '{"spaced" :  true}',
    ARRAY[g, -g, 0], ARRAY['a,b', 'quote''s', NULL, '', 'back\slash'], ARRAY['sad', 'happy']::mood[],
    CASE g % 4 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN 123456789012345678901234567890.123456789 ELSE -g / 7.0 END,
    g / 3.0,
    CASE WHEN g % 5 = 0 THEN 'infinity'::timestamptz ELSE '2024-02-29 23:59:59.999999+05:30'::timestamptz + g * interval '1 hour' END,
    '1999-12-31 23:59:59.5'::timestamp, '0044-03-15 BC'::date + g,
    interval '1 year 2 mons -3 days 04:05:06.789',
    CASE WHEN g % 2 = 0 THEN '\x00ff00'::bytea ELSE decode(md5(g::text), 'hex') END,
    md5(g::text)::uuid, (ARRAY['sad','ok','happy']::mood[])[1 + g % 3], g,
    ROW('Main St ' || g, 10000 + g)::addr,
    CASE g % 3 WHEN 0 THEN 1e308 WHEN 1 THEN -0.0 ELSE 0.1 END, 3.14159274, g % 2 = 0,
    'ab', 'xyz', '10.0.0.1/8', 12.34
  FROM generate_series(first, last) g;
INSERT INTO kinds (tenant_id, id) VALUES (t, last + 1);
$$;
`

// TestTypesSurviveSnapshotAndStream moves rows of every type family through
// the snapshot (binary COPY, text for arrays and composites of user types)
// and through the stream (pgoutput text), including a TOASTed value in a
// row later updated by a statement that does not touch it, and NULLs.
func TestTypesSurviveSnapshotAndStream(t *testing.T) {
	ctx := context.Background()
	s, d := src.NewTenantDB(t), dst.NewTenantDB(t)
	srcDSN, dstDSN := s.Admin, d.Admin
	mustExec(t, ctx, s.Owner, kindsSchema+`
SELECT add_kinds(7, 1, 200); SELECT add_kinds(8, 1, 50);`)
	// Shift the target's type OIDs away from the source's, as in any real
	// pair of databases, so binary COPY of an array of an enum would fail.
	mustExec(t, ctx, dstDSN, `CREATE TYPE oid_shift1 AS ENUM ('x'); CREATE TYPE oid_shift2 AS (a int)`)
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "7", Schema: "app", Tables: []string{"kinds"}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	j.cfg.Copy.ChunkRows = 50
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- j.Run(jctx) }()
	waitFor(t, 60*time.Second, "catch-up", func() bool { return j.Phase() == "catchup" })
	mustExec(t, ctx, srcDSN, `SET search_path = app;
SELECT add_kinds(7, 1000, 1100);
UPDATE kinds SET small = small + 1 WHERE tenant_id = 7 AND id IN (3, 6, 1002, 1005);  -- TOASTed big left as is
UPDATE kinds SET big = big || 'x', j = NULL, moods = NULL WHERE tenant_id = 7 AND id = 9;
UPDATE kinds SET a = ROW(NULL, 1)::addr, e = 'happy', n = 'NaN', ts = '-infinity' WHERE tenant_id = 7 AND id = 10;
UPDATE kinds SET id = id + 5000 WHERE tenant_id = 7 AND id = 12;  -- a key change
DELETE FROM kinds WHERE tenant_id = 7 AND id IN (4, 1004);
UPDATE kinds SET small = -1 WHERE tenant_id = 8;`)
	end := currentLSN(t, ctx, srcDSN)
	waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
	compareKinds(t, ctx, srcDSN, dstDSN)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("clean stop returned %v", err)
	}
	// The TOASTed values must have come through whole, not as NULL.
	tc := connectPinned(t, ctx, dstDSN)
	defer tc.Close(ctx)
	var n int
	if err := tc.QueryRow(ctx, `SELECT count(*) FROM app.kinds WHERE id IN (3, 6, 1002, 1005) AND length(big) = 9600`).Scan(&n); err != nil || n != 4 {
		t.Fatalf("TOASTed values after an update that did not touch them: %d of 4 intact (%v)", n, err)
	}
}

func compareKinds(t *testing.T, ctx context.Context, srcDSN, dstDSN string) {
	t.Helper()
	s := connectPinned(t, ctx, srcDSN)
	defer s.Close(ctx)
	d := connectPinned(t, ctx, dstDSN)
	defer d.Close(ctx)
	q := `SELECT x::text FROM app.kinds x WHERE tenant_id = 7 ORDER BY id`
	a, b := rowsOf(t, ctx, s, q), rowsOf(t, ctx, d, q)
	if len(a) < 300 || len(a) != len(b) {
		t.Fatalf("source has %d rows of tenant 7, target %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Errorf("row %d differs:\nsource %.400s\ntarget %.400s", i, a[i], b[i])
		}
	}
	var others int
	if err := d.QueryRow(ctx, `SELECT count(*) FROM app.kinds WHERE tenant_id <> 7`).Scan(&others); err != nil || others != 0 {
		t.Fatalf("target holds %d rows of other tenants (%v)", others, err)
	}
}

// TestTruncateStopsTheMove checks a TRUNCATE of a pooled table stops the
// job with a clear error and is never replayed: the target keeps its rows.
func TestTruncateStopsTheMove(t *testing.T) {
	ctx := context.Background()
	s, d := src.NewSaaS(t, 20, 5), dst.NewTenantDB(t)
	srcDSN, dstDSN := s.Admin, d.Admin
	j, err := New(Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Tables: movedTables}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- j.Run(ctx) }()
	waitFor(t, 60*time.Second, "catch-up", func() bool { return j.Phase() == "catchup" })
	mustExec(t, ctx, srcDSN, `INSERT INTO events (tenant_id, kind) VALUES (1, 'before truncate')`)
	end := currentLSN(t, ctx, srcDSN)
	waitFor(t, 60*time.Second, "target to reach "+end.String(), func() bool { return j.Applied() >= end })
	dc := connectPinned(t, ctx, dstDSN)
	defer dc.Close(ctx)
	before := rowsOf(t, ctx, dc, `SELECT x::text FROM public.events x ORDER BY id`)
	mustExec(t, ctx, srcDSN, `TRUNCATE events; INSERT INTO events (tenant_id, kind) VALUES (1, 'after truncate')`)
	var runErr error
	select {
	case runErr = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the job did not stop after a TRUNCATE of a moved table")
	}
	var te *stream.ErrTruncate
	if !errors.As(runErr, &te) {
		t.Fatalf("job ended with %v, want a TRUNCATE error", runErr)
	}
	t.Logf("error: %v", runErr)
	after := rowsOf(t, ctx, dc, `SELECT x::text FROM public.events x ORDER BY id`)
	if len(before) == 0 || len(after) != len(before) {
		t.Fatalf("target events: %d rows before the TRUNCATE, %d after", len(before), len(after))
	}
	for i := range before {
		if before[i] != after[i] {
			t.Fatalf("target row changed after the TRUNCATE: %s -> %s", before[i], after[i])
		}
	}
}
