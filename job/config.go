// Package job is the coordinator of one tenant move: it plans, checks,
// prepares both sides, takes the snapshot, and streams the tenant's changes,
// recording its phase in the target so a rerun after a crash resumes where
// the last run stopped.
package job

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/promoted/promoted/apply/kafka"
	"time"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/cutover"
	"github.com/promoted/promoted/db"
	"github.com/promoted/promoted/snapshot"
	"github.com/promoted/promoted/stream"
)

// Config is everything a move needs to know.
type Config struct {
	SourceDSN    string
	TargetDSN    string
	Tenant       string
	TenantColumn string
	Schema       string
	TargetSchema string
	Tables       []string
	// DryRun plans and runs every check, and creates nothing anywhere.
	DryRun bool
	// Kafka configures a kafka:// sink (the brokers and the topic prefix
	// come from TargetDSN).
	Kafka kafka.Config
	// Sequences are sequences of Schema the application calls by name,
	// moved besides those the tables use.
	Sequences []string
	// AllowEmpty lets a move start for a tenant with no rows (otherwise a
	// typo in --tenant would be promoted, catalog entry and fence
	// included).
	AllowEmpty bool
	// FixReplicaIdentity lets the move give tables whose replica identity
	// does not cover the tenant column one that does, so the server can
	// filter their changes. Without it the source is never altered.
	FixReplicaIdentity bool
	// SlotTimeout bounds how long slot creation waits for older source
	// transactions to end.
	SlotTimeout time.Duration
	// ProgressInterval is how often progress is logged.
	ProgressInterval time.Duration
	// LiveProgress is set when a live line on a terminal shows the
	// progress: the periodic progress log lines are then left out
	// (warnings, such as a stalled apply, are still logged).
	LiveProgress bool
	// MaxRetainedWAL is the most WAL the move's slot may hold back on the
	// source: past it the slot is dropped and the move stops.
	MaxRetainedWAL ByteSize
	// RetryFor is how long the catch-up keeps reconnecting after a
	// transient failure before it gives up with an error.
	RetryFor time.Duration

	// Promote ends the move with a cutover once the lag allows; without
	// it the job replicates until stopped.
	Promote bool
	// Demote makes the move a demotion (it implies Promote): the source is
	// a dedicated schema or database, the target the pooled tables that
	// other tenants use. The target tables must exist, are never altered,
	// and the catalog lives with them (the target by default).
	Demote bool
	// Rollback makes a demotion the undoing of a promotion (PromoteID):
	// no copy, the stream starts at the rollback slot the promotion made
	// on its target at the flip, and the apply passes the pooled rows'
	// fence, which the promotion left armed.
	Rollback  bool
	PromoteID string
	// NoRollback makes a promotion skip the rollback slot.
	NoRollback bool
	// VerifyOnly resumes a copied move just long enough to compare the
	// target with the source at one consistent point (`promoted verify`).
	VerifyOnly bool

	Copy    snapshot.CopyConfig
	Stream  stream.Config
	Apply   apply.Config
	Cutover cutover.Config
}

// BindMove registers the flags that name what moves: every command that
// runs a move has them.
func (c *Config) BindMove(fs *pflag.FlagSet) {
	fs.StringVar(&c.TenantColumn, "tenant-column", "tenant_id", "column that holds the tenant in pooled tables")
	fs.StringVar(&c.Schema, "schema", "public", "source schema")
	fs.StringVar(&c.TargetSchema, "target-schema", "", "target schema (default: same name; required when target and source are the same database)")
	fs.StringSliceVar(&c.Tables, "tables", nil, "tables to move (default: every table of --schema with the tenant column; a demotion also takes, whole, those without it whose pooled table has it)")
	fs.DurationVar(&c.SlotTimeout, "slot-timeout", time.Minute, "how long slot creation may wait for older source transactions to end")
	fs.DurationVar(&c.ProgressInterval, "progress-interval", 5*time.Second, "how often progress is logged")
	fs.DurationVar(&c.RetryFor, "retry-for", 10*time.Minute, "how long the catch-up keeps reconnecting after a lost connection or a restart before it gives up")
	c.MaxRetainedWAL = DefaultMaxRetainedWAL
	fs.Var(&c.MaxRetainedWAL, "max-retained-wal", "the most WAL the move's slot may hold back on the source (e.g. 8GB); past it the slot is dropped and the move stops, so the source's disk never fills")
}

// BindCopy registers the flags of a move that starts by copying (replicate
// and promote, not verify).
func (c *Config) BindCopy(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Sequences, "sequences", nil, "sequences of --schema the application calls by name, moved besides those the tables use")
	fs.BoolVar(&c.AllowEmpty, "allow-empty", false, "move a tenant that has no rows (refused otherwise: usually a typo in --tenant)")
	fs.BoolVar(&c.FixReplicaIdentity, "fix-replica-identity", false, "give tables whose replica identity lacks the tenant column a unique (tenant, key) index as replica identity, so the source filters them")
	c.Copy.Bind(fs)
}

// BindStream registers the flags of the catch-up stream and its apply.
func (c *Config) BindStream(fs *pflag.FlagSet) {
	c.Stream.Bind(fs)
	c.Apply.Bind(fs)
}

// UsageError is a configuration the command line should never have let
// through: the CLI exits 2 for it, like for a flag it cannot parse.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usage(err error) error {
	if err == nil {
		return nil
	}
	return &UsageError{Msg: err.Error()}
}

// Validate checks the configuration before anything is touched. Zero
// values of a Config built in code mean the defaults; a negative one is
// refused (the CLI also refuses a zero given on the command line).
func (c *Config) Validate() error {
	switch {
	case c.SourceDSN == "":
		return usage(errors.New("--source is required: pass the source database's connection string"))
	case c.TargetDSN == "":
		return usage(errors.New("--target (or --sink) is required: pass the target database's connection string"))
	case c.Tenant == "":
		return usage(errors.New("--tenant is required: pass the tenant's value of the tenant column"))
	}
	if c.TenantColumn == "" {
		c.TenantColumn = "tenant_id"
	}
	if c.Schema == "" {
		c.Schema = "public"
	}
	if c.TargetSchema == "" {
		c.TargetSchema = c.Schema
	}
	if c.TargetSchema == "promoted" || c.Schema == "promoted" {
		return usage(errors.New("schema promoted holds promoted's own state and cannot be moved from or into: choose another --schema or --target-schema"))
	}
	switch {
	case c.SlotTimeout < 0:
		return usage(fmt.Errorf("--slot-timeout %s is negative: pass a duration such as 1m", c.SlotTimeout))
	case c.SlotTimeout == 0:
		c.SlotTimeout = time.Minute
	}
	switch {
	case c.MaxRetainedWAL < 0:
		return usage(fmt.Errorf("--max-retained-wal %d is negative: pass a size such as 8GB", c.MaxRetainedWAL))
	case c.MaxRetainedWAL == 0:
		c.MaxRetainedWAL = DefaultMaxRetainedWAL
	}
	switch {
	case c.RetryFor < 0:
		return usage(fmt.Errorf("--retry-for %s is negative: pass a duration such as 10m", c.RetryFor))
	case c.RetryFor == 0:
		c.RetryFor = 10 * time.Minute
	}
	switch {
	case c.ProgressInterval < 0:
		return usage(fmt.Errorf("--progress-interval %s is negative: pass a duration such as 5s", c.ProgressInterval))
	case c.ProgressInterval == 0:
		c.ProgressInterval = 5 * time.Second
	}
	if _, err := db.ParseDSN(db.Source, c.SourceDSN); err != nil {
		return usage(err)
	}
	if c.IsKafka() {
		if c.DryRun {
			return usage(errors.New("--dry-run is not available for a kafka:// sink yet: run it with the postgres:// sink of the same tenant to see the plan"))
		}
		if c.Promote || c.VerifyOnly {
			return usage(errors.New("a kafka:// sink is for `promoted replicate`: promote, demote and verify need a PostgreSQL target"))
		}
		var err error
		if c.Kafka.Brokers, c.Kafka.Prefix, err = kafka.ParseSinkURL(c.TargetDSN); err != nil {
			return usage(err)
		}
		if err := c.Kafka.Validate(); err != nil {
			return usage(err)
		}
	} else if _, err := db.ParseDSN(db.Target, c.TargetDSN); err != nil {
		return usage(err)
	}
	if c.Demote {
		c.Promote = true
		if c.Cutover.CatalogDSN == "" {
			c.Cutover.CatalogDSN = c.TargetDSN
		}
	}
	if c.Promote {
		if err := c.Cutover.Validate(); err != nil {
			return usage(err)
		}
		if c.Cutover.CatalogDSN != "" {
			if _, err := db.ParseDSN(db.Catalog, c.Cutover.CatalogDSN); err != nil {
				return usage(err)
			}
		}
		if c.Cutover.Location == "" {
			c.Cutover.Location = db.Redact(c.TargetDSN)
		}
	}
	if err := c.Copy.Validate(); err != nil {
		return usage(err)
	}
	if err := c.Stream.Validate(); err != nil {
		return usage(err)
	}
	return usage(c.Apply.Validate())
}

// JobID names a move of one tenant out of one schema of one source
// database. The slot and publication are named after it, so `cancel` finds
// them with nothing but the source and the tenant.
func JobID(database, schema, tenant string) string {
	h := sha256.Sum256([]byte(database + "\x00" + schema + "\x00" + tenant))
	return hex.EncodeToString(h[:8])
}

// DemoteID names a demotion out of one schema of a dedicated database.
// It differs from JobID even when the dedicated and the pooled database
// share a name, so a demotion never takes a promotion's flip (recorded
// in the same catalog) for its own.
func DemoteID(database, schema, tenant string) string {
	return JobID(database, schema+"\x00demote", tenant)
}

// Redact removes the password from a connection string for messages.
func Redact(dsn string) string { return db.Redact(dsn) }
