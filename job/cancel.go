package job

import (
	"context"
	"fmt"

	"github.com/promoted/promoted/snapshot"
)

// Cancel drops a move's slot and publication from the source, so no WAL is
// pinned for it any more. The target is left as it is, for inspection.
func Cancel(ctx context.Context, sourceDSN, schemaName, tenant string) (string, error) {
	src, err := connect(ctx, sourceDSN, "source", "promoted")
	if err != nil {
		return "", err
	}
	defer src.Close(context.Background())
	var db string
	if err := src.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		return "", fmt.Errorf("identify source database: %w", err)
	}
	id := JobID(db, schemaName, tenant)
	if err := snapshot.Drop(ctx, src, snapshot.NamesFor(id)); err != nil {
		return id, err
	}
	return id, nil
}
