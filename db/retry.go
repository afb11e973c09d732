package db

import (
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Fatal is implemented by errors no retry can fix (a TRUNCATE of a pooled
// table, a target that diverged, a schema change, a lost slot): they stop
// the move whatever the connection's state.
type Fatal interface{ Fatal() bool }

// Transient reports whether err is worth retrying after a pause: the
// connection broke or timed out, or the server said it is shutting down,
// starting up, or gave up a transaction that may succeed when run again.
// It decides by SQLSTATE and by the connection's state, never by message
// text, and never retries an error marked Fatal.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var fatal Fatal
	if errors.As(err, &fatal) && fatal.Fatal() {
		return false
	}
	var silent interface{ Silent() bool }
	if errors.As(err, &silent) && silent.Silent() {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P01", // admin_shutdown: the server is stopping or restarting
			"57P02", // crash_shutdown
			"57P03", // cannot_connect_now: the server is starting up
			"40001", // serialization_failure
			"40P01", // deadlock_detected
			"53300", // too_many_connections
			"55006": // object_in_use: an old walsender still holds the slot
			return true
		}
		// Class 08: connection exceptions.
		return len(pgErr.Code) == 5 && pgErr.Code[:2] == "08"
	}
	var connect *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connect), errors.As(err, &netErr),
		errors.Is(err, pgconn.ErrConnClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE),
		pgconn.Timeout(err):
		return true
	}
	return false
}
