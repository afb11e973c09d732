package cutover

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/schema"
)

// SyncSequences sets every sequence the moved tables draw defaults from, on
// the target, at or above the source's value, so a row inserted at the new
// location with a default id never collides with one that was copied. A
// pooled sequence is shared by all tenants, so its value bounds the
// tenant's ids too.
func SyncSequences(ctx context.Context, src, dst *pgx.Conn, seqs []schema.Sequence) error {
	for _, s := range seqs {
		if s.Shared {
			continue
		}
		var last int64
		var called bool
		if err := src.QueryRow(ctx, "SELECT last_value, is_called FROM "+s.Source).Scan(&last, &called); err != nil {
			return fmt.Errorf("read sequence %s on the source: %w", s.Source, err)
		}
		// setval(seq, v, is_called): the next nextval returns v when
		// is_called is false, the next value after v otherwise.
		_, err := dst.Exec(ctx, `SELECT setval($1::regclass, $2, $3)
		    WHERE (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM `+s.Target+`) < $2 - CASE WHEN $3 THEN 0 ELSE 1 END`,
			s.Target, last, called)
		if err != nil {
			return fmt.Errorf("set sequence %s on the target: %w", s.Target, err)
		}
	}
	return nil
}
