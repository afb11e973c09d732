package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// root is the repository's root, seen from this package's folder (where
// go test runs).
const root = ".."

// compose is the part of docker-compose.yml these tests read.
type compose struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Volumes     []string          `yaml:"volumes"`
		Environment map[string]string `yaml:"environment"`
	} `yaml:"services"`
}

// readYAML parses a file of the repository (path relative to its root).
func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatal(fmt.Errorf("parse %s: %w", path, err))
	}
}

// mounts maps each bind mount's path in a service's container to the
// repository path it comes from, and checks that path exists.
func mounts(t *testing.T, c *compose, service string) map[string]string {
	t.Helper()
	svc, ok := c.Services[service]
	if !ok {
		t.Fatalf("docker-compose.yml has no %s service", service)
	}
	out := map[string]string{}
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || !strings.HasPrefix(parts[0], "./") {
			continue // a named volume
		}
		src := filepath.Clean(parts[0])
		if _, err := os.Stat(filepath.Join(root, src)); err != nil {
			t.Errorf("%s mounts %s, which is not in the repository: %v", service, parts[0], err)
		}
		out[parts[1]] = src
	}
	return out
}

// inContainer maps a path in a container back to the repository path
// mounted there, or "" when no mount holds it.
func inContainer(m map[string]string, path string) string {
	for dst, src := range m {
		if path == dst {
			return src
		}
		if rel, ok := strings.CutPrefix(path, dst+"/"); ok {
			return filepath.Join(src, rel)
		}
	}
	return ""
}

// TestPrometheusLoadsTheAlerts checks that Compose mounts the Prometheus
// configuration and the alert rules, and that the configuration names
// the rules where they are mounted.
func TestPrometheusLoadsTheAlerts(t *testing.T) {
	var c compose
	readYAML(t, "docker-compose.yml", &c)
	m := mounts(t, &c, "prometheus")
	config := inContainer(m, "/etc/prometheus/prometheus.yml")
	if config != filepath.Join("deploy", "prometheus.yml") {
		t.Fatalf("prometheus reads %q as /etc/prometheus/prometheus.yml, want deploy/prometheus.yml", config)
	}
	var prom struct {
		RuleFiles     []string         `yaml:"rule_files"`
		ScrapeConfigs []map[string]any `yaml:"scrape_configs"`
	}
	readYAML(t, config, &prom)
	var loaded []string
	for _, f := range prom.RuleFiles {
		if !filepath.IsAbs(f) {
			f = filepath.Join("/etc/prometheus", f) // relative to the configuration
		}
		src := inContainer(m, f)
		if src == "" {
			t.Errorf("deploy/prometheus.yml loads rules from %s, which no volume of the prometheus service provides", f)
		}
		loaded = append(loaded, src)
	}
	if !slices.Contains(loaded, filepath.Join("deploy", "alerts.yml")) {
		t.Errorf("prometheus loads the rules %v, not deploy/alerts.yml", loaded)
	}
	if len(prom.ScrapeConfigs) == 0 {
		t.Error("deploy/prometheus.yml scrapes nothing")
	}
}

// TestGrafanaProvisioning checks that Compose gives Grafana its
// provisioning and the dashboards, that the datasource is this file's
// Prometheus, and that the dashboard provider reads the mounted folder.
func TestGrafanaProvisioning(t *testing.T) {
	var c compose
	readYAML(t, "docker-compose.yml", &c)
	m := mounts(t, &c, "grafana")
	prov := inContainer(m, "/etc/grafana/provisioning")
	if prov != filepath.Join("deploy", "grafana", "provisioning") {
		t.Fatalf("grafana reads its provisioning from %q, want deploy/grafana/provisioning", prov)
	}

	var ds struct {
		Datasources []struct {
			Name, UID, Type, URL string
			IsDefault            bool `yaml:"isDefault"`
		} `yaml:"datasources"`
	}
	readYAML(t, filepath.Join(prov, "datasources", "prometheus.yml"), &ds)
	if len(ds.Datasources) != 1 {
		t.Fatalf("%d datasources provisioned, want the one Prometheus", len(ds.Datasources))
	}
	d := ds.Datasources[0]
	if d.Type != "prometheus" || !d.IsDefault || d.UID == "" {
		t.Errorf("datasource %+v: want the default, of type prometheus, with a uid", d)
	}
	if _, ok := c.Services["prometheus"]; !ok || d.URL != "http://prometheus:9090" {
		t.Errorf("datasource URL %q, want http://prometheus:9090 (the compose service)", d.URL)
	}

	var dp struct {
		Providers []struct {
			Name, Type string
			Options    struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, filepath.Join(prov, "dashboards", "promoted.yml"), &dp)
	if len(dp.Providers) != 1 || dp.Providers[0].Type != "file" {
		t.Fatalf("dashboard providers %+v: want one of type file", dp.Providers)
	}
	dir := inContainer(m, dp.Providers[0].Options.Path)
	if dir != filepath.Join("deploy", "grafana", "dashboards") {
		t.Errorf("the dashboard provider reads %s, which is %q in the repository, want deploy/grafana/dashboards", dp.Providers[0].Options.Path, dir)
	}
	if home := c.Services["grafana"].Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != "" {
		if src := inContainer(m, home); src != filepath.Join(dir, "promoted.json") {
			t.Errorf("grafana's home dashboard %s is %q in the repository, want the promoted dashboard", home, src)
		}
	}
	dash := readDashboard(t)
	if v := dash.variable("datasource"); v == nil || v.Type != "datasource" || v.Query != any(d.Type) {
		t.Errorf("the dashboard's datasource variable is %+v, want one of type datasource choosing among %s datasources", v, d.Type)
	}
}
