package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

// bindSummary registers --summary-json on the commands that end a move
// with a summary (promote, demote, rollback).
func bindSummary(fs *pflag.FlagSet, path *string) {
	fs.StringVar(path, "summary-json", "", "also write the summary to this file as JSON, for automation")
}

// moveSummary is the machine-readable summary --summary-json writes after
// a promote, demote or rollback: what the printed summary says, with
// stable names, for automation.
type moveSummary struct {
	Tenant          string           `json:"tenant"`
	Outcome         string           `json:"outcome"`
	AlreadyFlipped  bool             `json:"already_flipped"`
	Copied          map[string]int64 `json:"copied_rows"`
	RowsCopied      int64            `json:"rows_copied"`
	CopySeconds     float64          `json:"copy_seconds"`
	ChangesApplied  int64            `json:"changes_applied"`
	VerifiedBefore  int64            `json:"verified_rows_before_fence"`
	RecheckedBefore int64            `json:"rechecked_rows_before_fence"`
	VerifiedUnder   int64            `json:"verified_rows_under_fence"`
	LagAtFence      int64            `json:"lag_at_fence_bytes"`
	BlockedMS       int64            `json:"writes_blocked_ms"`
	CatalogVersion  int64            `json:"catalog_version"`
	Rollback        bool             `json:"rollback_possible"`
	SpreadSequences int              `json:"sequences_spread"`
}

// writeSummaryJSON writes a move's summary to path (nothing when path is
// empty).
func writeSummaryJSON(path, tenant, outcome string, s *job.Summary) error {
	if path == "" || s == nil {
		return nil
	}
	out := moveSummary{Tenant: tenant, Outcome: outcome, AlreadyFlipped: s.AlreadyFlipped, Copied: s.Copied, RowsCopied: s.RowsCopied,
		CopySeconds: s.CopySeconds, ChangesApplied: s.Changes, CatalogVersion: s.Version, Rollback: s.Rollback, SpreadSequences: s.Spread}
	for _, r := range s.Rounds {
		out.RecheckedBefore += r.Rows
	}
	if c := s.Cutover; c != nil {
		out.LagAtFence, out.BlockedMS = c.LagAtFence, c.Blocked.Milliseconds()
		if c.PreVerify != nil {
			out.VerifiedBefore = c.PreVerify.Rows
		}
		if c.Verify != nil {
			out.VerifiedUnder = c.Verify.Rows
		}
	}
	return writeJSON(path, out)
}

// writeJSON writes v to path, indented, replacing the file whole.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--summary-json: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("--summary-json: %w", err)
	}
	return nil
}

// writeSummaryFile writes v to path when one was given.
func writeSummaryFile(path string, v any) error {
	if path == "" {
		return nil
	}
	return writeJSON(path, v)
}
