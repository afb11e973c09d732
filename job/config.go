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
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/promoted/promoted/apply"
	"github.com/promoted/promoted/cutover"
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
	// FixReplicaIdentity lets the move give tables whose replica identity
	// does not cover the tenant column one that does, so the server can
	// filter their changes. Without it the source is never altered.
	FixReplicaIdentity bool
	// SlotTimeout bounds how long slot creation waits for older source
	// transactions to end.
	SlotTimeout time.Duration
	// ProgressInterval is how often progress is logged.
	ProgressInterval time.Duration

	// Promote ends the move with a cutover once the lag allows; without
	// it the job replicates until stopped.
	Promote bool
	// VerifyOnly resumes a copied move just long enough to compare the
	// target with the source at one consistent point (`promoted verify`).
	VerifyOnly bool

	Copy    snapshot.CopyConfig
	Stream  stream.Config
	Apply   apply.Config
	Cutover cutover.Config
}

// Bind registers the flags of a move (the CLI binds DSNs and the tenant).
func (c *Config) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&c.TenantColumn, "tenant-column", "tenant_id", "column that holds the tenant in pooled tables")
	fs.StringVar(&c.Schema, "schema", "public", "source schema")
	fs.StringVar(&c.TargetSchema, "target-schema", "", "target schema (default: same name; required when target and source are the same database)")
	fs.StringSliceVar(&c.Tables, "tables", nil, "tables to move (default: every table of --schema with the tenant column)")
	fs.BoolVar(&c.FixReplicaIdentity, "fix-replica-identity", false, "give tables whose replica identity lacks the tenant column a unique (tenant, key) index as replica identity, so the source filters them")
	fs.DurationVar(&c.SlotTimeout, "slot-timeout", time.Minute, "how long slot creation may wait for older source transactions to end")
	fs.DurationVar(&c.ProgressInterval, "progress-interval", 5*time.Second, "how often progress is logged")
	c.Copy.Bind(fs)
	c.Stream.Bind(fs)
	c.Apply.Bind(fs)
}

// Validate checks the configuration before anything is touched.
func (c *Config) Validate() error {
	switch {
	case c.SourceDSN == "":
		return errors.New("--source is required: pass the source database's connection string")
	case c.TargetDSN == "":
		return errors.New("--target (or --sink) is required: pass the target database's connection string")
	case c.Tenant == "":
		return errors.New("--tenant is required: pass the tenant's value of the tenant column")
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
	if c.SlotTimeout <= 0 {
		c.SlotTimeout = time.Minute
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = 5 * time.Second
	}
	for _, dsn := range []string{c.SourceDSN, c.TargetDSN} {
		if _, err := pgx.ParseConfig(dsn); err != nil {
			return fmt.Errorf("connection string %s is not valid: %w", Redact(dsn), err)
		}
	}
	if c.Promote {
		if err := c.Cutover.Validate(); err != nil {
			return err
		}
		if c.Cutover.Location == "" {
			c.Cutover.Location = Redact(c.TargetDSN)
		}
	}
	if err := c.Copy.Validate(); err != nil {
		return err
	}
	return c.Apply.Validate()
}

// JobID names a move of one tenant out of one schema of one source
// database. The slot and publication are named after it, so `cancel` finds
// them with nothing but the source and the tenant.
func JobID(database, schema, tenant string) string {
	h := sha256.Sum256([]byte(database + "\x00" + schema + "\x00" + tenant))
	return hex.EncodeToString(h[:8])
}

// Redact removes the password from a connection string for messages.
func Redact(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		if i := strings.Index(dsn, "@"); i > 0 {
			return "(connection string)" + dsn[i:]
		}
		return "(connection string)"
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}
