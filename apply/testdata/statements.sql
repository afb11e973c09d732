-- insert
INSERT INTO "tenant ""42"""."orders" ("tenant_id", "id", "it's", "total") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4);
-- insert of 3 rows
INSERT INTO "tenant ""42"""."orders" ("tenant_id", "id", "it's", "total") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4), ($5, $6, $7, $8), ($9, $10, $11, $12);
-- upsert (daemon-filtered tables)
INSERT INTO "tenant ""42"""."orders" ("tenant_id", "id", "it's", "total") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4) ON CONFLICT ("tenant_id", "id") DO UPDATE SET "it's" = EXCLUDED."it's", "total" = EXCLUDED."total";
-- upsert with nothing to set
INSERT INTO "tenant ""42"""."orders" ("tenant_id", "id") OVERRIDING SYSTEM VALUE VALUES ($1, $2) ON CONFLICT ("tenant_id", "id") DO NOTHING;
-- update by primary key
UPDATE "tenant ""42"""."orders" SET "tenant_id" = $1, "it's" = $2, "total" = $3 WHERE "tenant_id" = $4 AND "id" = $5;
-- update by replica identity
UPDATE "tenant ""42"""."orders" SET "total" = $1 WHERE "id" = $2 AND "tenant_id" = '42'::bigint;
-- delete
DELETE FROM "tenant ""42"""."orders" WHERE "tenant_id" = $1 AND "id" = $2;
-- upsert of 2 rows
INSERT INTO "tenant ""42"""."orders" ("tenant_id", "id", "it's", "total") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) ON CONFLICT ("tenant_id", "id") DO UPDATE SET "it's" = EXCLUDED."it's", "total" = EXCLUDED."total";
-- set-based update of 2 rows
UPDATE "tenant ""42"""."orders" AS promoted_t SET "tenant_id" = promoted_v.c0, "it's" = promoted_v.c1, "total" = promoted_v.c2 FROM (VALUES ($1::bigint, $2::bigint, $3::bigint, $4::text, $5::numeric(12,2)), ($6::bigint, $7::bigint, $8::bigint, $9::text, $10::numeric(12,2))) AS promoted_v(k0, k1, c0, c1, c2) WHERE promoted_t."tenant_id" = promoted_v.k0 AND promoted_t."id" = promoted_v.k1;
-- set-based delete of 2 rows
DELETE FROM "tenant ""42"""."orders" AS promoted_t USING (VALUES ($1::bigint, $2::bigint), ($3::bigint, $4::bigint)) AS promoted_v(k0, k1) WHERE promoted_t."tenant_id" = promoted_v.k0 AND promoted_t."id" = promoted_v.k1;
-- update of a table keyed without the tenant
UPDATE "tenant ""42"""."orders" SET "tenant_id" = $1, "it's" = $2, "total" = $3 WHERE "id" = $4 AND "tenant_id" = '42'::bigint;
-- delete of a table keyed without the tenant
DELETE FROM "tenant ""42"""."orders" WHERE "id" = $1 AND "tenant_id" = '42'::bigint;
-- upsert of a table keyed without the tenant
INSERT INTO "tenant ""42"""."orders" ("tenant_id", "id", "it's", "total") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) ON CONFLICT ("id") DO UPDATE SET "tenant_id" = EXCLUDED."tenant_id", "it's" = EXCLUDED."it's", "total" = EXCLUDED."total" WHERE "tenant ""42"""."orders"."tenant_id" = '42'::bigint;
-- set-based update of a table keyed without the tenant
UPDATE "tenant ""42"""."orders" AS promoted_t SET "tenant_id" = promoted_v.c0, "it's" = promoted_v.c1, "total" = promoted_v.c2 FROM (VALUES ($1::bigint, $2::bigint, $3::text, $4::numeric(12,2)), ($5::bigint, $6::bigint, $7::text, $8::numeric(12,2))) AS promoted_v(k0, c0, c1, c2) WHERE promoted_t."id" = promoted_v.k0 AND promoted_t."tenant_id" = '42'::bigint;
-- set-based delete of a table keyed without the tenant
DELETE FROM "tenant ""42"""."orders" AS promoted_t USING (VALUES ($1::bigint), ($2::bigint)) AS promoted_v(k0) WHERE promoted_t."id" = promoted_v.k0 AND promoted_t."tenant_id" = '42'::bigint;
