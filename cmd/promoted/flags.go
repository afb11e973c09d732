package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

// common are the flags every command shares.
type common struct {
	logFormat   string
	logLevel    string
	metricsAddr string
}

func (c *common) bind(fs *pflag.FlagSet) {
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (e.g. :9187)")
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
// PROMOTED_<FLAG> in the environment.
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
		name := "PROMOTED_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%w: %s=%q: %v", errUsage, name, v, err)
			}
		}
	})
	return envErr
}

func required(fs *pflag.FlagSet, names ...string) error {
	for _, n := range names {
		if f := fs.Lookup(n); f != nil && f.Value.String() == "" {
			return fmt.Errorf("%w: --%s is required (or PROMOTED_%s)", errUsage, n, strings.ToUpper(strings.ReplaceAll(n, "-", "_")))
		}
	}
	return nil
}

// moveCommand is what the commands that run a move (replicate, promote,
// verify) share: the source, the target (named by targetFlag), the tenant,
// the move's flags, parsing and the logger. extra binds the command's own
// flags.
type moveCommand struct {
	common
	cfg job.Config
	log *slog.Logger
}

func parseMove(name string, args []string, targetFlag, targetHelp string, extra func(*pflag.FlagSet, *job.Config)) (*moveCommand, error) {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	m := &moveCommand{}
	fs.StringVar(&m.cfg.SourceDSN, "source", "", "source database connection string (passwords from the DSN, PGPASSWORD or ~/.pgpass)")
	fs.StringVar(&m.cfg.TargetDSN, targetFlag, "", targetHelp)
	fs.StringVar(&m.cfg.Tenant, "tenant", "", "the tenant's value of the tenant column")
	m.bind(fs)
	m.cfg.Bind(fs)
	if extra != nil {
		extra(fs, &m.cfg)
	}
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	if err := required(fs, "source", targetFlag, "tenant"); err != nil {
		return nil, err
	}
	var err error
	m.log, err = m.logger(os.Stderr)
	return m, err
}
