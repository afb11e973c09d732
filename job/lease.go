package job

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/promoted/promoted/db"
)

// lease is a session-level advisory lock on the source held for the
// job's lifetime: a second daemon on the same tenant is refused while the
// first runs, and a crashed daemon's lease ends with its session.
type lease struct {
	conn  *pgx.Conn
	jobID string
}

func acquireLease(ctx context.Context, dsn, jobID, tenant string) (*lease, error) {
	conn, err := db.Open(ctx, db.Source, dsn, "promoted-lease")
	if err != nil {
		return nil, err
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('promoted'), hashtext($1))`, jobID).Scan(&ok); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("take the job's lease: %w", err)
	}
	if !ok {
		var holder string
		conn.QueryRow(ctx, `SELECT coalesce(string_agg(a.pid || ' (' || coalesce(a.application_name, '') || ' from ' || coalesce(a.client_addr::text, 'local') || ')', ', '), 'unknown')
		    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		   WHERE l.locktype = 'advisory' AND l.classid = hashtext('promoted')::oid AND l.objid = hashtext($1)::oid AND l.granted`, jobID).Scan(&holder)
		conn.Close(context.Background())
		return nil, fmt.Errorf("another promoted is already moving tenant %s (job %s, source session %s): wait for it to finish, or stop it first", tenant, jobID, holder)
	}
	return &lease{conn: conn, jobID: jobID}, nil
}

// release unlocks the lease before closing its session: a closed
// session's locks go only when its backend has exited, a moment later,
// and a cancel or rerun right after must not find the lease still taken.
func (l *lease) release() {
	if l == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.conn.Exec(ctx, `SELECT pg_advisory_unlock(hashtext('promoted'), hashtext($1))`, l.jobID)
	l.conn.Close(ctx)
}
