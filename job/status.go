package job

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/state"
)

// MoveStatus is what `promoted status` reports of one move recorded on a
// source: where it stands, what it holds on the source, whether a
// promoted is running it, and what to run next.
type MoveStatus struct {
	Job    string `json:"job"`
	Tenant string `json:"tenant"`
	Schema string `json:"schema"`
	Kind   string `json:"kind"`
	Phase  string `json:"phase"`
	Target string `json:"target"`
	// LastError is the outcome recorded by the last attempt that failed.
	LastError string    `json:"last_error,omitempty"`
	StartedAt time.Time `json:"started_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Running names the session holding the move's lease (pid, host), or
	// is empty when no promoted runs it.
	Running string `json:"running,omitempty"`
	// Slot is the move's slot on the source, when it exists, with the WAL
	// it retains and how far its consumer is behind the source.
	Slot        string `json:"slot,omitempty"`
	RetainedWAL int64  `json:"retained_wal_bytes"`
	LagBytes    int64  `json:"lag_bytes"`
	// LagSeconds is how long the source has had WAL the move has not
	// applied: as the running move last recorded it, or, when none runs
	// it, that figure plus the time since (nil when never measured).
	LagSeconds *float64 `json:"lag_seconds,omitempty"`
	// FenceArmed says the tenant's writes on the source are rejected, and
	// since when.
	FenceArmed bool       `json:"fence_armed"`
	FenceSince *time.Time `json:"fence_since,omitempty"`
	BlockedMS  *int64     `json:"blocked_ms,omitempty"`
	// RowsCopied of RowsEstimated (the planner's estimate of the tenant's
	// rows), as the copy last recorded them.
	RowsCopied    *int64 `json:"rows_copied,omitempty"`
	RowsEstimated *int64 `json:"rows_estimated,omitempty"`
	// Next is what to run next; Stuck marks a move that needs a person (it
	// failed, or stopped with no promoted running it).
	Next  string `json:"next"`
	Stuck bool   `json:"stuck"`
}

// Status reads every move recorded on the source, newest first.
func Status(ctx context.Context, sourceDSN string) ([]MoveStatus, error) {
	src, err := db.Open(ctx, db.Source, sourceDSN, "promoted-status")
	if err != nil {
		return nil, err
	}
	defer src.Close(context.Background())
	jobs, err := state.Jobs(ctx, src)
	if err != nil {
		return nil, err
	}
	out := make([]MoveStatus, 0, len(jobs))
	for _, j := range jobs {
		s := MoveStatus{Job: j.ID, Tenant: j.Tenant, Schema: j.Schema, Kind: j.Kind, Phase: j.Phase, Target: j.Target,
			StartedAt: j.StartedAt, UpdatedAt: j.UpdatedAt, BlockedMS: j.BlockedMS, RowsCopied: j.RowsCopied, RowsEstimated: j.RowsEstimated}
		if j.Phase == state.PhaseFailed {
			s.LastError = j.Outcome
		}
		if err := src.QueryRow(ctx, `SELECT coalesce(string_agg('pid ' || a.pid || ' from ' || coalesce(host(a.client_addr), 'local'), ', '), '')
		    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		   WHERE l.locktype = 'advisory' AND l.classid = hashtext('promoted')::oid AND l.objid = hashtext($1)::oid AND l.granted`, j.ID).Scan(&s.Running); err != nil {
			return nil, fmt.Errorf("read the lease of move %s: %w", j.ID, err)
		}
		slot := snapshot.NamesFor(j.ID).Slot
		var retained, lag *int64
		err := src.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
		    FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&retained, &lag)
		if err == nil {
			s.Slot = slot
			if retained != nil {
				s.RetainedWAL = *retained
			}
			if lag != nil {
				s.LagBytes = *lag
			}
		}
		s.LagSeconds = statusLag(j, s)
		if armed, since, err := state.FenceArmed(ctx, src, j.ID); err != nil {
			return nil, err
		} else if armed {
			s.FenceArmed, s.FenceSince = true, &since
		}
		s.Next, s.Stuck = next(j, s)
		out = append(out, s)
	}
	return out, nil
}

// statusLag is the move's lag in time: the running move's last record
// of it, or, when no promoted runs it, that record grown by its age, since
// nothing has been applied since (an upper bound when it was caught up).
func statusLag(j *state.Job, s MoveStatus) *float64 {
	switch {
	case s.Slot == "" || j.LagSeconds == nil || j.LagAge == nil:
		return nil
	case s.Running != "":
		return j.LagSeconds
	case s.LagBytes == 0:
		zero := 0.0
		return &zero
	}
	grown := *j.LagSeconds + max(*j.LagAge, 0)
	return &grown
}

// next says what to run after a move, from its kind and phase, and
// whether it needs a person.
func next(j *state.Job, s MoveStatus) (string, bool) {
	again := "rerun the same `promoted " + j.Kind + "` to resume, or `promoted cancel --source ... --tenant " + j.Tenant + "`"
	running := s.Running != ""
	switch j.Phase {
	case state.PhaseCancelled, state.PhaseCleaned, state.PhaseRolledBack:
		return "nothing: the move has ended", false
	case state.PhaseFlipped, state.PhaseDone:
		switch j.Kind {
		case state.KindDemote:
			return "optional: `promoted cleanup --source ... --target ... --tenant " + j.Tenant + " --drop-source-tables` drops the dedicated tables", false
		case state.KindRollback:
			return "nothing: the tenant is back in the pooled tables", false
		}
		what := "`promoted cleanup --source ... --tenant " + j.Tenant + "` deletes the old rows"
		if j.ReverseLSN != "" {
			what += "; until then `promoted rollback` takes the tenant back"
		}
		if j.Phase == state.PhaseFlipped && !running {
			return "rerun `promoted promote` to drop the slot the flipped move still holds, then " + what, true
		}
		return what, false
	case state.PhaseFailed:
		return strings.TrimSpace("the last attempt failed (last_error): " + again), true
	}
	if running {
		return "running: watch it (promoted_job_lag_bytes), or stop it with SIGTERM", false
	}
	return "no promoted runs it and its slot holds WAL: " + again, true
}
