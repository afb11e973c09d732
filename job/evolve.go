package job

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
	"github.com/promoted/promoted/apply/kafka"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/stream"
)

// follows reports whether the move follows columns added to and dropped
// from its tables on the source: a replica does, for it lives for months;
// a move that ends in a flip does not (its cutover compares the target
// with the definitions it planned, and stops on any change).
func (j *Job) follows() bool {
	return !j.cfg.Promote && !j.cfg.Demote && !j.cfg.Rollback && !j.cfg.VerifyOnly
}

// addedColumn is the stream's resolver for a column added on the source:
// it reads the column's type, and the value the rows that existed before
// the ADD COLUMN hold, from the source's catalog on a session of its own
// (the event is rare; the job's other sessions are busy). types, for a
// Kafka replica, learns the new column's type for the record schema.
func (j *Job) addedColumn(types *kafka.Types) stream.ColumnResolver {
	return func(ctx context.Context, t *promoted.Table, name string, oid uint32, typmod int32) (promoted.Column, error) {
		col := promoted.Column{Name: name, TypeOID: oid}
		if oid >= promoted.FirstUserOID {
			return col, fmt.Errorf("its type (OID %d) is user-defined, and a replica follows added columns of built-in types only: cancel the replica and run it again to copy the tenant with the new definition", oid)
		}
		conn, err := db.Open(ctx, db.Source, j.cfg.SourceDSN, "promoted-schema")
		if err != nil {
			return col, err
		}
		defer conn.Close(context.Background())
		if err := conn.QueryRow(ctx, `SELECT format_type($1, $2)`, oid, typmod).Scan(&col.Type); err != nil {
			return col, fmt.Errorf("read its type: %w", err)
		}
		if types != nil {
			if err := types.AddColumn(ctx, conn, t, name, oid, typmod); err != nil {
				return col, err
			}
		}
		// The catalog is read now, later than the stream's position: a
		// column already dropped again is simply not found (it goes again
		// with the next Relation message), one dropped and added anew with
		// another type is refused.
		var (
			now      uint32
			def      bool
			missing  *string
			notFound bool
		)
		err = conn.QueryRow(ctx, `SELECT a.atttypid, a.atthasdef, CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END
FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1::regclass AND a.attname = $2 AND NOT a.attisdropped`,
			pgx.Identifier{t.Schema, t.Name}.Sanitize(), name).Scan(&now, &def, &missing)
		switch {
		case err == pgx.ErrNoRows:
			notFound = true
		case err != nil:
			return col, fmt.Errorf("read it in the source's catalog: %w", err)
		case now != oid:
			return col, fmt.Errorf("it was dropped and added again with another type since: cancel the replica and run it again")
		}
		switch {
		case notFound:
		case missing != nil:
			col.Missing = promoted.QuoteLiteral(*missing) + "::" + col.Type
		case def && types == nil:
			// A default PostgreSQL computed row by row (random(), a
			// serial's nextval) rewrote the table, and a rewrite is not in
			// the change stream: the target cannot learn those rows'
			// values. Kafka records never re-send unchanged rows anyway.
			return col, fmt.Errorf("it has a default the source computed row by row (a volatile default rewrites the table, and a rewrite is not in the change stream), so the replica cannot know the existing rows' values: cancel the replica and run it again to copy the tenant with the new column")
		}
		return col, nil
	}
}
