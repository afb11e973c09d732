package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/testenv"
)

// catalogOf describes everything a run could create in a database: schemas,
// relations and their replica identities, types, functions, triggers,
// publications and the database's replication slots.
func catalogOf(t *testing.T, ctx context.Context, dsn string) string {
	t.Helper()
	return queryOne[string](t, ctx, dsn, `SELECT coalesce(string_agg(x, E'\n' ORDER BY x), '') FROM (
	    SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
	  UNION ALL
	    SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text || c.relreplident::text
	      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	     WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
	  UNION ALL
	    SELECT 'type ' || n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
	     WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
	  UNION ALL
	    SELECT 'function ' || n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
	     WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
	  UNION ALL
	    SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
	  UNION ALL
	    SELECT 'publication ' || pubname FROM pg_publication
	  UNION ALL
	    SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database()
	) s(x)`)
}

// expectRefusal runs `promoted replicate` with args and expects a refusal:
// exit status 1, exactly one line on stderr naming the problem (it must
// contain want), and neither database changed in any way: no slot, no
// publication, no target schema, table or promoted.progress.
func expectRefusal(t *testing.T, srcDSN, dstDSN, want string, args ...string) {
	t.Helper()
	ctx := context.Background()
	srcBefore, dstBefore := catalogOf(t, ctx, srcDSN), catalogOf(t, ctx, dstDSN)
	code, stdout, stderr := runCLI(t, append([]string{"replicate"}, args...)...)
	if code != 1 {
		t.Errorf("exit status %d, want 1\nstderr: %s", code, stderr)
	}
	if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("stderr is %d lines, want exactly one:\n%s", len(lines), stderr)
	}
	if !strings.HasPrefix(stderr, "promoted: ") || !strings.Contains(stderr, want) {
		t.Errorf("stderr %q does not name the problem (want %q)", stderr, want)
	}
	if stdout != "" {
		t.Errorf("stdout is not empty: %q", stdout)
	}
	if n := queryOne[int](t, ctx, srcDSN, `SELECT count(*)::int FROM pg_replication_slots WHERE slot_name LIKE 'promoted\_%'`); n != 0 {
		t.Errorf("%d promoted replication slots left on the source", n)
	}
	if n := queryOne[int](t, ctx, srcDSN, `SELECT count(*)::int FROM pg_publication WHERE pubname LIKE 'promoted\_%'`); n != 0 {
		t.Errorf("%d promoted publications left on the source", n)
	}
	if queryOne[bool](t, ctx, dstDSN, `SELECT to_regnamespace('promoted') IS NOT NULL`) {
		t.Error("the target has a promoted schema (promoted.progress) after a refusal")
	}
	if after := catalogOf(t, ctx, srcDSN); after != srcBefore {
		t.Errorf("the refusal changed the source catalog:\nbefore:\n%s\nafter:\n%s", srcBefore, after)
	}
	if after := catalogOf(t, ctx, dstDSN); after != dstBefore {
		t.Errorf("the refusal changed the target catalog:\nbefore:\n%s\nafter:\n%s", dstBefore, after)
	}
}

// TestUsageErrors: bad invocations exit 2 with one line saying what is
// wrong, before connecting anywhere.
func TestUsageErrors(t *testing.T) {
	replicate := []string{"replicate", "--source", "postgres://127.0.0.1:1/x", "--sink", "postgres://127.0.0.1:1/y", "--tenant", "1"}
	promote := []string{"promote", "--source", "postgres://127.0.0.1:1/x", "--target", "postgres://127.0.0.1:1/y", "--tenant", "1"}
	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"no_source", "--source is required", []string{"replicate", "--tenant", "1", "--sink", "postgres://127.0.0.1:1/x"}},
		{"no_tenant", "--tenant is required", []string{"replicate", "--source", "postgres://127.0.0.1:1/x", "--sink", "postgres://127.0.0.1:1/y"}},
		{"unknown_sink", "kafka://host:port/PREFIX", []string{"replicate", "--source", "postgres://127.0.0.1:1/x", "--tenant", "1", "--sink", "mysql://127.0.0.1:1/p"}},
		{"kafka_sink_without_prefix", "PREFIX", []string{"replicate", "--source", "postgres://127.0.0.1:1/x", "--tenant", "1", "--sink", "kafka://127.0.0.1:1"}},
		{"kafka_sink_for_promote", "kafka:// sink is for `promoted replicate`", []string{"promote", "--source", "postgres://127.0.0.1:1/x", "--tenant", "1", "--target", "kafka://127.0.0.1:1/p"}},
		{"unknown_flag", "--bogus", []string{"replicate", "--bogus"}},
		{"cancel_no_source", "--source is required", []string{"cancel", "--tenant", "1"}},
		// Bad values are usage errors (2), never refusals (1), and a zero
		// is never quietly taken for the default.
		{"fence_check_maybe", "--fence-check", append(promote, "--fence-check", "maybe")},
		{"cutover_timeout_negative", "--cutover-timeout", append(promote, "--cutover-timeout", "-1s")},
		{"cutover_timeout_zero", "--cutover-timeout", append(promote, "--cutover-timeout", "0s")},
		{"parallel_1000", "--parallel 1000", append(replicate, "--parallel", "1000")},
		{"parallel_zero", "--parallel", append(replicate, "--parallel", "0")},
		{"batch_rows_zero", "--batch-rows", []string{"cleanup", "--source", "postgres://127.0.0.1:1/x", "--tenant", "1", "--batch-rows", "0"}},
		{"target_schema_promoted", "schema promoted", append(replicate, "--target-schema", "promoted")},
		{"source_unparseable", "source connection string cannot be parsed", []string{"replicate", "--source", "postgres://u:s3cr%zz@127.0.0.1/x", "--sink", "postgres://127.0.0.1:1/y", "--tenant", "1"}},
		{"drop_target_without_target", "--drop-target needs --target", []string{"cancel", "--source", "postgres://127.0.0.1:1/x", "--tenant", "1", "--drop-target"}},
		// Each command takes only the flags that mean something for it:
		// a comparison never changes the source.
		{"verify_fix_replica_identity", "--fix-replica-identity", []string{"verify", "--source", "postgres://127.0.0.1:1/x", "--target", "postgres://127.0.0.1:1/y", "--tenant", "1", "--fix-replica-identity"}},
		{"verify_parallel", "--parallel", []string{"verify", "--source", "postgres://127.0.0.1:1/x", "--target", "postgres://127.0.0.1:1/y", "--tenant", "1", "--parallel", "2"}},
		{"cancel_cutover_flag", "--cutover-timeout", []string{"cancel", "--source", "postgres://127.0.0.1:1/x", "--tenant", "1", "--cutover-timeout", "5s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			if code != 2 {
				t.Errorf("exit status %d, want 2; stderr: %s", code, stderr)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "promoted: ") || !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q: want one line starting %q and naming %q", stderr, "promoted: ", tc.want)
			}
			if stdout != "" {
				t.Errorf("stdout is not empty: %q", stdout)
			}
			// A connection string that does not parse is never echoed:
			// any part of it may be the password.
			if strings.Contains(stderr, "s3cr") || strings.Contains(stderr, "zz@") {
				t.Errorf("stderr repeats the connection string: %q", stderr)
			}
		})
	}
}

// TestUnreachableSourceIsOneLine: a source that refuses the connection is
// a refusal (1) in one line, although the driver's error spans several
// (one per address tried).
func TestUnreachableSourceIsOneLine(t *testing.T) {
	code, _, stderr := runCLI(t, "replicate", "--source", "postgres://127.0.0.1:1/x", "--sink", "kafka://127.0.0.1:1/p", "--tenant", "1")
	if code != 1 {
		t.Errorf("exit status %d, want 1; stderr: %s", code, stderr)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "promoted: ") || !strings.Contains(stderr, "connect to the source") {
		t.Errorf("stderr %q: want one line starting %q and naming the source", stderr, "promoted: ")
	}
}

// TestRefuseSourceSettings: a source that cannot host the slot is refused
// before anything is created. Each case needs its own cluster; they start
// in parallel.
func TestRefuseSourceSettings(t *testing.T) {
	t.Run("wal_level_replica", func(t *testing.T) {
		t.Parallel()
		c := startCluster(t, map[string]string{"wal_level": "replica"})
		sdb, ddb := c.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		expectRefusal(t, sdb.Admin, ddb.Admin, "wal_level=replica", "--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1")
	})
	t.Run("no_free_slot", func(t *testing.T) {
		t.Parallel()
		c := startCluster(t, map[string]string{"max_replication_slots": "1", "max_wal_senders": "4"})
		sdb, ddb := c.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN := sdb.Admin
		ctx := context.Background()
		mustExec(t, ctx, srcDSN, `SELECT pg_create_logical_replication_slot('occupied', 'pgoutput')`)
		expectRefusal(t, srcDSN, ddb.Admin, "no free replication slot (1 of max_replication_slots=1 in use)",
			"--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1")
		if s := slotsOf(t, ctx, srcDSN); len(s) != 1 || s[0] != "occupied" {
			t.Errorf("slots after the refusal: %v, want only the occupying one", s)
		}
	})
}

// startCluster starts an extra cluster with settings, stopped at cleanup.
func startCluster(t *testing.T, settings map[string]string) *testenv.Cluster {
	t.Helper()
	c, err := testenv.Start(context.Background(), testenv.Options{Name: "cli-" + strings.ReplaceAll(t.Name(), "/", "-"), Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// TestRefusePlan: roles, tables and tenants promoted cannot move are
// refused with one line, leaving both sides untouched.
func TestRefusePlan(t *testing.T) {
	ctx := context.Background()
	// role creates a login role on the shared cluster, unique per test run.
	role := func(t *testing.T, srcDSN, attrs string) string {
		name := "r_" + dbName(t, srcDSN)
		mustExec(t, ctx, srcDSN, "CREATE ROLE "+pgx.Identifier{name}.Sanitize()+" LOGIN "+attrs)
		return name
	}
	t.Run("no_replication_attribute", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		r := role(t, srcDSN, "NOREPLICATION")
		expectRefusal(t, srcDSN, dstDSN, "lacks the REPLICATION attribute",
			"--source", src.DSN(dbName(t, srcDSN), r), "--sink", ddb.Mover, "--tenant", "1")
	})
	t.Run("no_select_on_one_table", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		name := role(t, srcDSN, "REPLICATION")
		r := pgx.Identifier{name}.Sanitize()
		// It owns every moved table (as CREATE PUBLICATION needs) but has
		// given up SELECT on orders.
		mustExec(t, ctx, srcDSN, `ALTER TABLE customers OWNER TO `+r+`; ALTER TABLE orders OWNER TO `+r+`;
		    ALTER TABLE order_lines OWNER TO `+r+`; ALTER TABLE events OWNER TO `+r+`; REVOKE SELECT ON orders FROM `+r)
		expectRefusal(t, srcDSN, dstDSN, "lacks SELECT on public.orders",
			"--source", src.DSN(dbName(t, srcDSN), name), "--sink", ddb.Mover, "--tenant", "1")
	})
	t.Run("no_primary_key", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		mustExec(t, ctx, srcDSN, `CREATE TABLE audit_log (tenant_id bigint NOT NULL, msg text); INSERT INTO audit_log VALUES (1, 'a')`)
		expectRefusal(t, srcDSN, dstDSN, "audit_log has no primary key",
			"--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1", "--tables", "customers,audit_log")
	})
	t.Run("no_tenant_column", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		expectRefusal(t, srcDSN, dstDSN, "tenants has no column tenant_id",
			"--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1", "--tables", "customers,tenants")
	})
	t.Run("tenant_not_bigint", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		expectRefusal(t, srcDSN, dstDSN, `tenant "abc" is not a valid bigint`,
			"--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "abc")
	})
	t.Run("tenant_injection", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		mustExec(t, ctx, dstDSN, `CREATE TABLE tenants (id bigint PRIMARY KEY)`)
		tenant := "1'); DROP TABLE tenants; --"
		expectRefusal(t, srcDSN, dstDSN, "is not a valid bigint", "--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", tenant)
		if n := queryOne[int](t, ctx, srcDSN, `SELECT count(*)::int FROM tenants`); n != 5 {
			t.Errorf("source tenants holds %d rows, want 5", n)
		}
	})
	t.Run("replica_identity_nothing", func(t *testing.T) {
		// Publishing it would fail every tenant's UPDATE and DELETE.
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		mustExec(t, ctx, srcDSN, `ALTER TABLE events REPLICA IDENTITY NOTHING`)
		expectRefusal(t, srcDSN, dstDSN, "REPLICA IDENTITY NOTHING", "--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1")
	})
	t.Run("replica_identity_index_dropped", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		mustExec(t, ctx, srcDSN, `CREATE UNIQUE INDEX events_ri ON events (tenant_id, id); ALTER TABLE events REPLICA IDENTITY USING INDEX events_ri; DROP INDEX events_ri`)
		expectRefusal(t, srcDSN, dstDSN, "that index was dropped", "--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1")
	})
	t.Run("no_create_on_source", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		// The mover acts as the tables' owner, who owns the database:
		// hand the database to another role and withhold CREATE.
		mustExec(t, ctx, sdb.Admin, fmt.Sprintf(`ALTER DATABASE %s OWNER TO postgres; REVOKE CREATE ON DATABASE %[1]s FROM %s`, sdb.Name, testenv.Mover))
		expectRefusal(t, sdb.Admin, ddb.Admin, "cannot create schema promoted on the source", "--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1")
	})
	t.Run("target_table_unreadable", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		mustExec(t, ctx, ddb.Admin, `CREATE TABLE events (id bigint PRIMARY KEY, tenant_id bigint NOT NULL, kind text)`)
		expectRefusal(t, sdb.Admin, ddb.Admin, "may not read and write it", "--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1")
	})
	t.Run("target_holds_tenant_rows", func(t *testing.T) {
		sdb, ddb := src.NewSaaS(t, 20, 2), dst.NewTenantDB(t)
		srcDSN, dstDSN := sdb.Admin, ddb.Admin
		mustExec(t, ctx, ddb.Owner, `CREATE TABLE events (id bigint PRIMARY KEY, tenant_id bigint NOT NULL, kind text); INSERT INTO events VALUES (1, 1, 'stale')`)
		expectRefusal(t, srcDSN, dstDSN, "already holds rows of tenant 1", "--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", "1")
		if n := queryOne[int](t, ctx, dstDSN, `SELECT count(*)::int FROM events`); n != 1 {
			t.Errorf("target events holds %d rows after the refusal, want the 1 it had", n)
		}
	})
}

// TestReplicateAwkwardIdentifiers replicates a tenant whose schema, table,
// column and value are built to break naive quoting, under SIGTERM at the
// end, and compares every row.
func TestReplicateAwkwardIdentifiers(t *testing.T) {
	ctx := context.Background()
	sdb, ddb := src.NewTenantDB(t), dst.NewTenantDB(t)
	srcDSN, dstDSN := sdb.Admin, ddb.Admin
	const (
		schema = `Odd "Schema"`
		table  = `Line Items; DROP`
		column = `Tenant"Id`
		tenant = `1'); DROP TABLE x; --`
	)
	tables := []string{table, "ev'ents"}
	q := func(s string) string {
		return strings.NewReplacer("$schema", pgx.Identifier{schema}.Sanitize(), "$items", pgx.Identifier{schema, table}.Sanitize(),
			"$events", pgx.Identifier{schema, "ev'ents"}.Sanitize(), "$col", pgx.Identifier{column}.Sanitize()).Replace(s)
	}
	// The canary x lives on both sides: an injected DROP TABLE x on
	// either would remove it.
	mustExec(t, ctx, dstDSN, `CREATE TABLE x (id int PRIMARY KEY); INSERT INTO x VALUES (1)`)
	mustExec(t, ctx, sdb.Owner, q(`CREATE TABLE x (id int PRIMARY KEY); INSERT INTO x VALUES (1);
	    CREATE SCHEMA $schema;
	    -- keyed by (tenant, id): the server filters it, with the tenant in the row filter
	    CREATE TABLE $items ($col text NOT NULL, id bigserial, "Qty; --" int NOT NULL, "it's" text, PRIMARY KEY ($col, id));
	    -- keyed by id alone: promoted filters it itself
	    CREATE TABLE $events (id bigserial PRIMARY KEY, $col text NOT NULL, payload text)`))
	others := []string{"1", "2"}
	seed := func(n int) {
		mustExec(t, ctx, sdb.Owner, q(`INSERT INTO $items ($col, "Qty; --", "it's") SELECT t, g, 'it''s ' || g FROM unnest($1::text[]) t, generate_series(1, $2::int) g`),
			append(others, tenant), n)
		mustExec(t, ctx, sdb.Owner, q(`INSERT INTO $events ($col, payload) SELECT t, 'p' || g FROM unnest($1::text[]) t, generate_series(1, $2::int) g`),
			append(others, tenant), n)
	}
	seed(60)
	// Statistics, so the copy splits the tenant's rows into key ranges
	// whose bounds carry the tenant literal.
	mustExec(t, ctx, srcDSN, `ANALYZE`)
	jobID, names := jobNames(t, srcDSN, schema, tenant)
	d := startDaemon(t, nil, "replicate", "--source", sdb.Mover, "--sink", ddb.Mover, "--tenant", tenant,
		"--schema", schema, "--tenant-column", column, "--parallel", "2", "--chunk-rows", "20")
	waitPhase(t, d, ctx, dstDSN, jobID, "catchup")

	// Changes of every kind, on the tenant and on the others, and events
	// moving in and out of the tenant.
	seed(10)
	mustExec(t, ctx, srcDSN, q(`UPDATE $items SET "it's" = 'changed '' --' WHERE $col = $1 AND id % 3 = 0`), tenant)
	mustExec(t, ctx, srcDSN, q(`DELETE FROM $items WHERE $col = $1 AND id % 5 = 0`), tenant)
	mustExec(t, ctx, srcDSN, q(`UPDATE $events SET $col = $1 WHERE $col = '2' AND id % 4 = 0`), tenant)
	mustExec(t, ctx, srcDSN, q(`UPDATE $events SET $col = '1' WHERE $col = $1 AND id % 7 = 0`), tenant)
	mustExec(t, ctx, srcDSN, q(`DELETE FROM $events WHERE $col = $1 AND id % 11 = 0`), tenant)
	waitCaughtUp(t, d, ctx, srcDSN, dstDSN, jobID)
	d.terminate(t)

	compareTenant(t, ctx, srcDSN, dstDSN, schema, schema, column, tenant, tables)
	for _, dsn := range []string{srcDSN, dstDSN} {
		if !queryOne[bool](t, ctx, dsn, `SELECT to_regclass('public.x') IS NOT NULL`) {
			t.Errorf("canary table x is gone from %s", dbName(t, dsn))
		}
	}
	if s := slotsOf(t, ctx, srcDSN); len(s) != 1 || s[0] != names.Slot {
		t.Errorf("slots after a clean stop: %v, want [%s]", s, names.Slot)
	}
	cancelJob(t, ctx, sdb.Mover, schema, tenant)
}
