package job

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted"
)

// connect opens a plain session with the pinned GUCs.
func connect(ctx context.Context, dsn, side, app string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%s connection string: %w", side, err)
	}
	for k, v := range promoted.SessionParams {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["application_name"] = app
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the %s: %w", side, err)
	}
	return conn, nil
}
