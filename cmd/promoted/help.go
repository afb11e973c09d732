package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// flagGroups are a command's flags by what they are about, so that its
// --help is read by topic instead of as one list of thirty: each
// component's Config binds its flags into the group it belongs to, and the
// command's FlagSet is made of the groups (a flag is in exactly one).
type flagGroups struct {
	Connections   *pflag.FlagSet // the databases (and brokers) the command talks to
	Move          *pflag.FlagSet // which tenant, which tables, how the move guards itself
	Copy          *pflag.FlagSet // the snapshot copy
	Apply         *pflag.FlagSet // the catch-up stream and how it writes
	Cutover       *pflag.FlagSet // the fence, the check under it and the catalog flip
	Observability *pflag.FlagSet // logs, metrics, machine-readable output
}

// newFlagGroups makes the empty groups a command binds its flags into.
func newFlagGroups() *flagGroups {
	set := func() *pflag.FlagSet {
		fs := pflag.NewFlagSet("", pflag.ContinueOnError)
		fs.SortFlags = false // the order they are bound in: the most needed first
		return fs
	}
	return &flagGroups{Connections: set(), Move: set(), Copy: set(), Apply: set(), Cutover: set(), Observability: set()}
}

// titled is a group with its heading, in the order --help prints them.
type titled struct {
	title string
	fs    *pflag.FlagSet
}

func (g *flagGroups) ordered() []titled {
	return []titled{{"Connections", g.Connections}, {"The move", g.Move}, {"Copy", g.Copy},
		{"Apply", g.Apply}, {"Cutover", g.Cutover}, {"Observability", g.Observability}}
}

// flagSet is the command's FlagSet: every group's flags (a name bound in
// two groups panics, as pflag does for any flag defined twice), with a
// --help and -h that print the command's help on stdout.
func (g *flagGroups) flagSet(name string) *pflag.FlagSet {
	h, ok := helpText[name]
	if !ok {
		panic("no help text for command " + name)
	}
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	for _, t := range g.ordered() {
		t.fs.VisitAll(fs.AddFlag)
	}
	fs.Usage = func() { g.printHelp(os.Stdout, h) }
	return fs
}

// bindRouted binds a component's flags (bind) into the group into, except
// the ones named in elsewhere: those go to the group given there, or, when
// it is nil, are not bound at all because the command ignores them (they
// keep their defaults, and the command line refuses them).
func bindRouted(into *pflag.FlagSet, bind func(*pflag.FlagSet), elsewhere map[string]*pflag.FlagSet) {
	all := pflag.NewFlagSet("", pflag.ContinueOnError)
	all.SortFlags = false
	bind(all)
	all.VisitAll(func(f *pflag.Flag) {
		dst, moved := elsewhere[f.Name]
		switch {
		case !moved:
			into.AddFlag(f)
		case dst != nil:
			dst.AddFlag(f)
		}
	})
	for name := range elsewhere {
		if all.Lookup(name) == nil {
			panic("bindRouted: the component binds no flag --" + name)
		}
	}
}

// Help layout: lines at most helpWidth wide; a flag's description starts
// in a column as wide as the group's longest flag needs, up to
// maxFlagColumn; a longer flag has its description on the lines below.
const (
	helpWidth     = 80
	maxFlagColumn = 32
)

// printHelp prints a command's help: synopsis, what it is for, an example,
// then its flags under one heading per group that has any.
func (g *flagGroups) printHelp(w io.Writer, h cmdHelp) {
	fmt.Fprintf(w, "Usage:\n  %s\n\n%s\n\nExample:\n%s\n", h.synopsis, strings.TrimSpace(h.about), indent(strings.TrimSpace(h.example)))
	for _, t := range g.ordered() {
		if t.fs.HasFlags() {
			fmt.Fprintf(w, "\n%s:\n%s", t.title, flagUsages(t.fs))
		}
	}
	fmt.Fprintf(w, "\nEvery flag can also be given as an environment variable PROMOTED_<FLAG>\n(e.g. --source as PROMOTED_SOURCE); the command line wins.\n")
}

// flagUsages lists a group's flags, one per entry: the flag and the kind
// of value it takes, then what it does and its default.
func flagUsages(fs *pflag.FlagSet) string {
	type entry struct{ flag, text string }
	var entries []entry
	col := 0
	fs.VisitAll(func(f *pflag.Flag) {
		e := entry{flag: "  --" + f.Name}
		varname, usage := pflag.UnquoteUsage(f)
		if varname != "" && f.Value.Type() != "bool" {
			e.flag += " " + varname
		}
		e.text = usage
		if !zeroDefault[f.DefValue] {
			def := f.DefValue
			switch f.Value.Type() {
			case "string":
				def = fmt.Sprintf("%q", def)
			case "duration": // 1m, not 1m0s
				if strings.HasSuffix(def, "m0s") {
					def = strings.TrimSuffix(def, "0s")
				}
				if strings.HasSuffix(def, "h0m") {
					def = strings.TrimSuffix(def, "0m")
				}
			}
			e.text += " (default " + def + ")"
		}
		if n := len(e.flag) + 2; n <= maxFlagColumn && n > col {
			col = n
		}
		entries = append(entries, e)
	})
	var b strings.Builder
	pad := strings.Repeat(" ", col)
	for _, e := range entries {
		if len(e.flag)+2 > col { // too wide for the column: the text goes below
			b.WriteString(e.flag + "\n" + pad)
		} else {
			fmt.Fprintf(&b, "%-*s", col, e.flag)
		}
		b.WriteString(strings.ReplaceAll(wrapText(e.text, helpWidth-col), "\n", "\n"+pad) + "\n")
	}
	return b.String()
}

// zeroDefault are the defaults not worth printing: empty, zero, off.
var zeroDefault = map[string]bool{"": true, "0": true, "0s": true, "false": true, "[]": true}

// wrapText breaks s into lines of at most width columns, between words.
func wrapText(s string, width int) string {
	var b strings.Builder
	n := 0
	for i, word := range strings.Fields(s) {
		switch {
		case i == 0:
		case n+1+len(word) > width:
			b.WriteByte('\n')
			n = 0
		default:
			b.WriteByte(' ')
			n++
		}
		b.WriteString(word)
		n += len(word)
	}
	return b.String()
}

// indent indents every line of s by two columns.
func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
