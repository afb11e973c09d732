package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	// The packages that declare promoted's metrics: importing them
	// registers every metric with the default registry, the one
	// promoted's /metrics serves (promhttp.Handler in
	// cmd/promoted/metrics.go).
	_ "github.com/promoted/promoted/apply"
	_ "github.com/promoted/promoted/apply/kafka"
	_ "github.com/promoted/promoted/cutover"
	_ "github.com/promoted/promoted/job"
	_ "github.com/promoted/promoted/snapshot"
	_ "github.com/promoted/promoted/stream"
)

// metricName finds promoted's metric names in PromQL and in the text
// around it (a panel's description, an alert's annotations).
var metricName = regexp.MustCompile(`\bpromoted_[a-z0-9_]+`)

// exported reports whether promoted registers a metric family of this
// name. The registry refuses a descriptor whose name is registered with
// another help string, and accepts one of a name nobody registered (the
// probe is then unregistered at once). Names metricName finds are valid,
// so a refusal means the name is taken.
func exported(name string) bool {
	probe := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "deploy test probe"})
	if err := prometheus.DefaultRegisterer.Register(probe); err != nil {
		return true
	}
	prometheus.DefaultRegisterer.Unregister(probe)
	return false
}

// unknownMetrics returns the promoted metric names the texts mention, and
// those of them promoted does not export. A histogram's series (_bucket,
// _sum, _count) count as the histogram.
func unknownMetrics(texts []string) (names, unknown []string) {
	for _, s := range texts {
		for _, n := range metricName.FindAllString(s, -1) {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	for _, n := range names {
		found := exported(n)
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(n, suffix); ok && !found {
				found = exported(base)
			}
		}
		if !found {
			unknown = append(unknown, n)
		}
	}
	return names, unknown
}

// texts collects every string of a parsed JSON or YAML document.
func texts(doc any) []string {
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			out = append(out, v)
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	return out
}

// dashboard is the part of the Grafana dashboard these tests read.
type dashboard struct {
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
	raw    any
}

type variable struct {
	Name, Type string
	Query      any
}

type source struct{ Type, UID string }

type panel struct {
	ID          int
	Type, Title string
	Datasource  *source
	Targets     []struct {
		Expr       string
		Datasource *source
	}
}

func readDashboard(t *testing.T) *dashboard {
	t.Helper()
	path := filepath.Join("deploy", "grafana", "dashboards", "promoted.json")
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(fmt.Errorf("parse %s: %w", path, err))
	}
	if err := json.Unmarshal(b, &d.raw); err != nil {
		t.Fatal(fmt.Errorf("parse %s: %w", path, err))
	}
	return &d
}

func (d *dashboard) variable(name string) *variable {
	for i, v := range d.Templating.List {
		if v.Name == name {
			return &d.Templating.List[i]
		}
	}
	return nil
}

// TestDashboard checks that every panel queries the datasource variable
// and that every metric the dashboard names is one promoted exports.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	for _, name := range []string{"datasource", "tenant"} {
		if d.variable(name) == nil {
			t.Errorf("the dashboard has no $%s variable", name)
		}
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: want queries of the $datasource variable", p.Title)
		}
		for _, q := range p.Targets {
			if q.Expr == "" || q.Datasource == nil || q.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: query %q does not ask $datasource", p.Title, q.Expr)
			}
		}
	}
	names, unknown := unknownMetrics(texts(d.raw))
	if len(names) < 20 {
		t.Fatalf("the dashboard names only %d metrics: %v", len(names), names)
	}
	for _, n := range unknown {
		t.Errorf("the dashboard names %s, which promoted does not export", n)
	}
}

// TestAlerts checks that every alert has a severity, a summary and a
// runbook section that exists and names it, and that every metric the
// rules name is one promoted exports.
func TestAlerts(t *testing.T) {
	path := filepath.Join("deploy", "alerts.yml")
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr string
				Labels      map[string]string
				Annotations map[string]string
			}
		}
	}
	readYAML(t, path, &rules)
	var raw any
	readYAML(t, path, &raw)
	runbook, err := os.ReadFile(filepath.Join(root, "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(runbook), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			anchors["docs/runbook.md#"+anchor(h)] = true
		}
	}
	count := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			count++
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("group %s: a rule without an alert name or an expression: %+v", g.Name, r)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("%s has no summary", r.Alert)
			}
			if rb := r.Annotations["runbook"]; !anchors[rb] {
				t.Errorf("%s: runbook %q is no section of docs/runbook.md", r.Alert, rb)
			}
			if !strings.Contains(string(runbook), r.Alert) {
				t.Errorf("docs/runbook.md does not name %s", r.Alert)
			}
		}
	}
	if count == 0 {
		t.Fatal("deploy/alerts.yml has no rules")
	}
	names, unknown := unknownMetrics(texts(raw))
	if len(names) < 5 {
		t.Fatalf("the alerts name only %d metrics: %v", len(names), names)
	}
	for _, n := range unknown {
		t.Errorf("an alert names %s, which promoted does not export", n)
	}
}

// anchor is the fragment GitHub gives a Markdown heading.
func anchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestUnknownMetricsAreCaught checks the check: a name promoted does not
// export is reported (and the probe leaves nothing registered), one it
// does is not, and a histogram's series count as the histogram.
func TestUnknownMetricsAreCaught(t *testing.T) {
	for range 2 {
		_, unknown := unknownMetrics([]string{`rate(promoted_job_lag_bytes[5m]) + promoted_no_such_metric_total`})
		if !slices.Equal(unknown, []string{"promoted_no_such_metric_total"}) {
			t.Fatalf("unknown metrics %v, want the made-up one alone", unknown)
		}
	}
	_, unknown := unknownMetrics([]string{`histogram_quantile(0.9, rate(promoted_cutover_blocked_seconds_bucket[5m]))`,
		`promoted_cutover_blocked_seconds_sum / promoted_cutover_blocked_seconds_count`, `promoted_job_lag_bytes_bucket_x`})
	if !slices.Equal(unknown, []string{"promoted_job_lag_bytes_bucket_x"}) {
		t.Fatalf("unknown metrics %v, want only promoted_job_lag_bytes_bucket_x", unknown)
	}
	var doc any
	if err := yaml.Unmarshal([]byte("a: [x, {b: promoted_y}]"), &doc); err != nil {
		t.Fatal(err)
	}
	if got := texts(doc); !slices.Contains(got, "promoted_y") {
		t.Fatalf("texts of a nested document: %v", got)
	}
}
