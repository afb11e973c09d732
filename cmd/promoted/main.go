// Command promoted moves one tenant's data between the isolation tiers of a
// multi-tenant PostgreSQL platform while the tenant keeps working.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/promoted/promoted/job"
)

const usage = `promoted moves one tenant's data between PostgreSQL isolation tiers, live.

Usage:
  promoted promote   --source DSN --target DSN --tenant ID [flags]
  promoted demote    --source DEDICATED_DSN --target POOLED_DSN --tenant ID [flags]
  promoted rollback  --source POOLED_DSN --target DEDICATED_DSN --tenant ID   after promote, before cleanup
  promoted replicate --source DSN --tenant ID --sink postgres://... | kafka://host:port/PREFIX [flags]
  promoted verify    --source DSN --target DSN --tenant ID   compare at a consistent point
  promoted cancel    --source DSN --tenant ID [--drop-target --target DSN]
  promoted cleanup   --source DSN --tenant ID   after a promote: delete the old rows
                     (after a demote: --target POOLED_DSN --drop-source-tables)
  promoted status    --source DSN [--json]   every move recorded there, and what to run next
  promoted demo      the whole story on throwaway local clusters (--sink kafka: the analytics replica)
  promoted --version

Run 'promoted COMMAND --help' (or 'promoted help COMMAND') for what a command
does and its flags. Every flag can also be given as an environment variable
PROMOTED_<FLAG> (e.g. PROMOTED_SOURCE).
`

// errUsage marks errors that exit with status 2, on one line that ends
// with the command's --help to run.
var errUsage = errors.New("usage")

func main() {
	// PROMOTED_CPUPROFILE=file writes a CPU profile of the run, for
	// `go tool pprof` (the benchmark's slow spots are found this way).
	if path := os.Getenv("PROMOTED_CPUPROFILE"); path != "" {
		if f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid())); err == nil {
			pprof.StartCPUProfile(f)
			code := run(os.Args[1:])
			pprof.StopCPUProfile()
			f.Close()
			os.Exit(code)
		}
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && (args[0] == "--version" || args[0] == "version") {
		fmt.Println(version())
		return 0
	}
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		if len(args) > 1 && args[0] == "help" {
			return run([]string{args[1], "--help"}) // promoted help COMMAND
		}
		fmt.Fprint(os.Stdout, usage)
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "replicate":
		err = replicate(ctx, args[1:])
	case "promote":
		err = promote(ctx, args[1:])
	case "demote":
		err = demote(ctx, args[1:])
	case "rollback":
		err = rollback(ctx, args[1:])
	case "verify":
		err = verifyCmd(ctx, args[1:])
	case "cleanup":
		err = cleanup(ctx, args[1:])
	case "cancel":
		err = cancel(ctx, args[1:])
	case "demo":
		err = demo(ctx, args[1:])
	case "status":
		err = status(ctx, args[1:])
	default:
		fmt.Fprintf(os.Stderr, "promoted: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, pflag.ErrHelp):
		return 0
	case errors.Is(err, errUsage) || isUsage(err):
		err = usageOf(err)
		fmt.Fprintf(os.Stderr, "promoted: %s; run 'promoted %s --help'\n", oneLine(strings.TrimPrefix(err.Error(), errUsage.Error()+": ")), args[0])
		return 2
	default:
		fmt.Fprintln(os.Stderr, "promoted:", oneLine(err.Error()))
		return 1
	}
}

// oneLine keeps an error on the one line the contract promises: the
// driver's connection errors list each address tried on a line of its own.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\n\t", "; ")
	return strings.ReplaceAll(s, "\n", " ")
}

// version is the module version and the commit it was built from, as
// the Go toolchain records them in the binary.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "promoted (no build information)"
	}
	v, rev, dirty := info.Main.Version, "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	out := "promoted " + v
	if rev != "" {
		out += " commit " + rev
		if dirty {
			out += " (modified)"
		}
	}
	return out + " " + info.GoVersion
}

func isUsage(err error) bool {
	var ue *job.UsageError
	return errors.As(err, &ue)
}
