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
UPDATE "tenant ""42"""."orders" SET "total" = $1 WHERE "id" = $2;
-- delete
DELETE FROM "tenant ""42"""."orders" WHERE "tenant_id" = $1 AND "id" = $2;
