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
//
// With spread (a promotion), the target's sequence starts well beyond the
// source's: SpreadIDs ahead, or half the way to its maximum when that is
// nearer. Other tenants keep taking ids from the pooled sequence, and the
// tenant's new ids must never meet theirs, or taking the tenant back into
// the pooled tables (a rollback or a demotion) would collide on a table
// keyed by the sequence alone.
func SyncSequences(ctx context.Context, src, dst *pgx.Conn, seqs []schema.Sequence, spread bool) error {
	for _, s := range seqs {
		if s.Shared {
			continue
		}
		var last int64
		var called bool
		if err := src.QueryRow(ctx, "SELECT last_value, is_called FROM "+s.Source).Scan(&last, &called); err != nil {
			return fmt.Errorf("read sequence %s on the source: %w", s.Source, err)
		}
		if !called {
			last-- // the last value handed out
		}
		gap := int64(0)
		if spread {
			gap = SpreadIDs
		}
		// setval(seq, v): the next nextval returns v + 1.
		_, err := dst.Exec(ctx, `SELECT setval($1::regclass, v) FROM (
		        SELECT $2::bigint + least($3::bigint, (seqmax - $2::bigint) / 2) AS v FROM pg_sequence WHERE seqrelid = $1::regclass) x
		    WHERE v > (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM `+s.Target+`)`,
			s.Target, last, gap)
		if err != nil {
			return fmt.Errorf("set sequence %s on the target: %w", s.Target, err)
		}
	}
	return nil
}

// SpreadIDs is how far ahead of the pooled sequence a promotion starts the
// dedicated one (2^40: a million ids a second for twelve days).
const SpreadIDs int64 = 1 << 40

// SyncPooledSequences sets, after a demotion's drain, each pooled sequence
// the moved tables draw defaults from to GREATEST(its value, the tenant's
// largest id there + 1), and never lowers it: the pooled sequence is every
// tenant's, and the dedicated one may run far ahead of the tenant's ids
// (a promotion keeps the two ranges apart). A sequence no moved column
// uses (one the application calls by name) follows the dedicated one.
func SyncPooledSequences(ctx context.Context, src, dst *pgx.Conn, seqs []schema.Sequence) error {
	var byName []schema.Sequence
	for _, s := range seqs {
		if s.Shared {
			continue
		}
		if s.Table == nil || s.Column == "" {
			byName = append(byName, s)
			continue
		}
		t := s.Table
		q := `SELECT setval($1::regclass, m) FROM (SELECT max(` + pgx.Identifier{s.Column}.Sanitize() + `)::bigint AS m FROM ` +
			pgx.Identifier{t.TargetSchema, t.TargetName}.Sanitize() + ` WHERE ` + t.TenantPredicate() + `) x
		    WHERE m IS NOT NULL AND m > (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM ` + s.Target + `)`
		if _, err := dst.Exec(ctx, q, s.Target); err != nil {
			return fmt.Errorf("set pooled sequence %s past tenant %s's ids: %w", s.Target, t.TenantLiteral, err)
		}
	}
	return SyncSequences(ctx, src, dst, byName, false)
}
