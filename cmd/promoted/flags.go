package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

// common are the flags of logging and metrics, which most commands share.
type common struct {
	logFormat    string
	logLevel     string
	metricsAddr  string
	verifyRemote bool
}

// bindLog registers the logging flags: every command that logs has them.
func (c *common) bindLog(fs *pflag.FlagSet) {
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
}

// bindMetrics registers --metrics-addr, for the commands that serve
// /metrics while they run.
func (c *common) bindMetrics(fs *pflag.FlagSet) {
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (e.g. :9187)")
}

// bindVerify registers the flag of the commands whose daemon answers
// GET /verify.
func (c *common) bindVerify(fs *pflag.FlagSet) {
	fs.BoolVar(&c.verifyRemote, "verify-remote", false, "answer GET /verify from other hosts too (by default only from this host: a verification reads the whole tenant on both databases)")
}

func (c *common) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: use debug, info, warn or error", errUsage, c.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: --log-format %q: use text or json", errUsage, c.logFormat)
}

// parse parses args, filling every flag not given on the command line from
// PROMOTED_<FLAG> in the environment, and refuses a zero or negative
// value for a flag that must be positive.
func parse(fs *pflag.FlagSet, args []string) error {
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	var envErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || envErr != nil {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%w: %s=%q: %v", errUsage, name, v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	return positive(fs)
}

// envName is the environment variable that gives a flag: PROMOTED_<FLAG>.
func envName(flag string) string {
	return "PROMOTED_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// positiveFlags must be above zero when given: a zero is never quietly
// taken to mean the default.
var positiveFlags = []string{"parallel", "chunk-rows", "max-lag", "cutover-timeout", "batch-rows", "apply-batch",
	"apply-batch-age", "max-txn-changes", "status-interval", "slot-timeout", "progress-interval"}

func positive(fs *pflag.FlagSet) error {
	for _, name := range positiveFlags {
		f := fs.Lookup(name)
		if f == nil || !f.Changed {
			continue
		}
		v := f.Value.String()
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			continue
		}
		if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
			continue
		}
		return fmt.Errorf("%w: --%s %s: must be above zero (the default is %s)", errUsage, name, v, f.DefValue)
	}
	return nil
}

func required(fs *pflag.FlagSet, names ...string) error {
	for _, n := range names {
		if f := fs.Lookup(n); f != nil && f.Value.String() == "" {
			return fmt.Errorf("%w: --%s is required (or %s)", errUsage, n, envName(n))
		}
	}
	return nil
}

// moveCommand is what the commands that run a move (replicate, promote,
// demote, rollback, verify) share: the source, the target, the tenant, the
// move's flags, parsing and the logger.
type moveCommand struct {
	common
	cfg      job.Config
	log      *slog.Logger
	progress string
	// live is the terminal's progress line, when there is one.
	live *liveLine
}

// moveSpec is how a move command differs from the others. Each command
// accepts only the flags that mean something for it.
type moveSpec struct {
	// targetFlag names the target (--target, or replicate's --sink);
	// targetHelp says what it is.
	targetFlag, targetHelp string
	// serves: the command runs as a daemon that serves /metrics and
	// answers GET /verify.
	serves bool
	// recorded: the tables, the target schema and the tenant column are
	// the recorded move's (a rollback's are its promotion's), not flags.
	recorded bool
	// extra binds the command's own flags.
	extra func(*flagGroups, *job.Config)
}

func parseMove(name string, args []string, spec moveSpec) (*moveCommand, error) {
	g := newFlagGroups()
	m := &moveCommand{}
	g.Connections.StringVar(&m.cfg.SourceDSN, "source", "", "source database connection string (passwords from the DSN, PGPASSWORD or ~/.pgpass)")
	g.Connections.StringVar(&m.cfg.TargetDSN, spec.targetFlag, "", spec.targetHelp)
	g.Move.StringVar(&m.cfg.Tenant, "tenant", "", "the tenant's value of the tenant column")
	m.bindLog(g.Observability)
	g.Observability.StringVar(&m.progress, "progress", "auto", "how progress is shown: bar (one live line: the snapshot's bar, then the catch-up's lag), log (a line every --progress-interval), or auto (bar when stderr is a terminal and --log-format is text)")
	if spec.serves {
		m.bindMetrics(g.Observability)
		m.bindVerify(g.Observability)
	}
	elsewhere := map[string]*pflag.FlagSet{"progress-interval": g.Observability}
	if spec.recorded {
		elsewhere["tenant-column"], elsewhere["target-schema"], elsewhere["tables"] = nil, nil, nil
	}
	bindRouted(g.Move, m.cfg.BindMove, elsewhere)
	m.cfg.BindStream(g.Apply)
	if spec.extra != nil {
		spec.extra(g, &m.cfg)
	}
	fs := g.flagSet(name)
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	if err := required(fs, "source", spec.targetFlag, "tenant"); err != nil {
		return nil, err
	}
	bar, err := progressMode(m.progress, m.logFormat)
	if err != nil {
		return nil, err
	}
	var logs io.Writer = os.Stderr
	if bar {
		m.live = &liveLine{out: os.Stderr}
		m.cfg.LiveProgress, logs = true, m.live
	}
	m.log, err = m.logger(logs)
	return m, err
}

// usageOf marks a configuration the job refused as a usage error (exit 2).
func usageOf(err error) error {
	var ue *job.UsageError
	if errors.As(err, &ue) {
		return fmt.Errorf("%w: %s", errUsage, ue.Msg)
	}
	return err
}
