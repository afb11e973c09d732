package main

import (
	"flag"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/promoted/promoted/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/help/")

// commands are every command, in the order of the top-level usage.
var commands = []string{"promote", "demote", "rollback", "replicate", "verify", "cancel", "cleanup", "status", "demo"}

// TestHelpGolden: each command's --help, and the top-level usage
// (testdata/help/promoted.golden), are exactly what
// testdata/help/<command>.golden holds (`go test
// ./cmd/promoted -run TestHelpGolden -update` rewrites them after a
// deliberate change, to be reviewed in the diff). -h and `promoted help
// COMMAND` print the same, on stdout, with status 0.
func TestHelpGolden(t *testing.T) {
	for name := range helpText {
		if !slices.Contains(commands, name) {
			t.Errorf("command %s has help text but no golden test: add it to commands", name)
		}
	}
	for _, name := range append([]string{"promoted"}, commands...) {
		t.Run(name, func(t *testing.T) {
			spellings := [][]string{{name, "--help"}, {name, "-h"}, {"help", name}}
			if name == "promoted" {
				spellings = [][]string{{"--help"}, {"-h"}, {"help"}}
			}
			var got string
			for i, args := range spellings {
				code, stdout, stderr := runCLI(t, args...)
				if code != 0 || stderr != "" {
					t.Fatalf("promoted %s: exit %d, stderr %q; want 0 and nothing", strings.Join(args, " "), code, stderr)
				}
				if i == 0 {
					got = stdout
				} else if stdout != got {
					t.Errorf("promoted %s prints another help than promoted %s:\n%s", strings.Join(args, " "), strings.Join(spellings[0], " "), stdout)
				}
			}
			testenv.Golden(t, filepath.Join("testdata", "help", name+".golden"), got, *update)
		})
	}
}

// TestHelpLayout: each command's help has its sections in order, every
// flag line fits in helpWidth columns, and PROMOTED_<FLAG> is said once.
func TestHelpLayout(t *testing.T) {
	headings := []string{"Connections:", "The move:", "Copy:", "Apply:", "Cutover:", "Observability:"}
	for _, name := range commands {
		_, out, _ := runCLI(t, name, "--help")
		if !strings.HasPrefix(out, "Usage:\n  promoted "+name+" ") || !strings.Contains(out, "\n\nExample:\n  promoted "+name+" ") {
			t.Errorf("%s --help lacks its synopsis or example:\n%s", name, out)
		}
		if n := strings.Count(out, "PROMOTED_<FLAG>"); n != 1 {
			t.Errorf("%s --help says PROMOTED_<FLAG> %d times, want once", name, n)
		}
		last := -1
		for _, h := range headings {
			i := strings.Index(out, "\n"+h+"\n")
			if i < 0 {
				continue
			}
			if i < last {
				t.Errorf("%s --help: %s is out of order", name, h)
			}
			last = i
		}
		if last < 0 {
			t.Errorf("%s --help has no flag group", name)
		}
		// The flags: after the example, which ends at the first blank line.
		ex := strings.Index(out, "\nExample:\n")
		flags := out[ex+strings.Index(out[ex:], "\n\n"):]
		for _, line := range strings.Split(flags, "\n") {
			if len(line) > helpWidth {
				t.Errorf("%s --help: %d columns, more than %d: %q", name, len(line), helpWidth, line)
			}
		}
	}
}

// TestUsageErrorPointsToHelp: a usage error (2) is one line that names
// the problem and ends with the command's --help to run: an unknown flag
// on every command, a flag the command does not take although another one
// does, a missing flag and a bad value.
func TestUsageErrorPointsToHelp(t *testing.T) {
	type usageCase struct {
		args []string
		want string
	}
	var cases []usageCase
	for _, name := range commands {
		cases = append(cases, usageCase{[]string{name, "--bogus"}, "unknown flag: --bogus"})
	}
	// Flags that were bound once and ignored: refused now.
	for _, args := range [][]string{
		{"rollback", "--location", "x"}, {"rollback", "--tables", "a"}, {"rollback", "--tenant-column", "c"}, {"rollback", "--target-schema", "s"},
		{"cancel", "--metrics-addr", ":0"}, {"cleanup", "--metrics-addr", ":0"}, {"verify", "--metrics-addr", ":0"},
		{"verify", "--max-lag", "1"}, {"status", "--log-level", "debug"}, {"cancel", "--parallel", "2"},
	} {
		cases = append(cases, usageCase{args, "unknown flag: " + args[1]})
	}
	cases = append(cases, usageCase{[]string{"status"}, "--source is required"},
		usageCase{[]string{"demote", "--source", "postgres://127.0.0.1:1/x", "--target", "postgres://127.0.0.1:1/y", "--tenant", "1", "--max-lag", "0"}, "--max-lag 0: must be above zero"})
	for _, c := range cases {
		name := c.args[0]
		for _, a := range c.args[1:] {
			if strings.HasPrefix(a, "--") {
				name = c.args[0] + "_" + strings.TrimPrefix(a, "--") // the last flag
			}
		}
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, c.args...)
			hint := "; run 'promoted " + c.args[0] + " --help'\n"
			if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) || !strings.HasSuffix(stderr, hint) || stdout != "" {
				t.Errorf("promoted %s: exit %d, stdout %q, stderr %q; want 2 and one line naming %q, ending %q", strings.Join(c.args, " "), code, stdout, stderr, c.want, hint)
			}
		})
	}
}
