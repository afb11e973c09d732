// Package testenv starts throwaway PostgreSQL clusters from the system's
// binaries, for tests, benchmarks and `promoted demo`. A cluster lives in a
// temporary directory, listens on a free 127.0.0.1 port with
// wal_level=logical, and is removed by Stop. When the process runs as root
// the server runs as the postgres user, because initdb refuses root.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options tune a cluster. The zero value is a logical-replication-ready
// PostgreSQL suitable for tests.
type Options struct {
	// Name appears in the directory name and in errors.
	Name string
	// Settings are extra postgresql.conf settings; they override defaults.
	Settings map[string]string
	// Durable keeps fsync on (benchmarks that compare with baselines on
	// equal terms may want it; tests do not).
	Durable bool
	// CPUs pins the server to these CPUs (taskset's list, e.g. "0"), so a
	// benchmark can give source and target a core each, as two machines
	// would have; empty leaves it unpinned.
	CPUs string
}

// Cluster is one running PostgreSQL server.
type Cluster struct {
	Name string
	Dir  string
	Port int
	bin  string
	// runAs is the user the server runs as ("" when the current user).
	runAs string
	cpus  string
}

// BinDir finds the PostgreSQL 15 server binaries: $PG_BINDIR, then
// /usr/lib/postgresql/15/bin, then pg_config --bindir.
func BinDir() (string, error) {
	candidates := []string{os.Getenv("PG_BINDIR"), "/usr/lib/postgresql/15/bin"}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries not found (no initdb in $PG_BINDIR or /usr/lib/postgresql/15/bin): install them with `apt-get install -y postgresql-15` or set PG_BINDIR")
}

// Start creates and starts a new cluster.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name = "pg"
	}
	dir, err := os.MkdirTemp("", "promoted-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("testenv %s: %w", name, err)
	}
	c := &Cluster{Name: name, Dir: dir, bin: bin, cpus: opts.CPUs}
	if os.Geteuid() == 0 {
		c.runAs = "postgres"
		if err := chownTo(dir, c.runAs); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testenv %s: %w", name, err)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := c.run(ctx, "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testenv %s: initdb: %w: %s", name, err, lastLines(out, 5))
	}
	settings := map[string]string{
		"wal_level":                 "logical",
		"max_replication_slots":     "40",
		"max_wal_senders":           "40",
		"max_connections":           "200",
		"listen_addresses":          "'127.0.0.1'",
		"unix_socket_directories":   "'" + dir + "'",
		"shared_buffers":            "128MB",
		"fsync":                     "off",
		"synchronous_commit":        "on",
		"full_page_writes":          "off",
		"wal_sender_timeout":        "30s",
		"max_prepared_transactions": "10",
		"logging_collector":         "off",
		"log_min_messages":          "warning",
		"log_line_prefix":           "'%m [%p] %q%u@%d '",
	}
	if opts.Durable {
		settings["fsync"] = "on"
		settings["full_page_writes"] = "on"
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var conf bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&conf, "%s = %s\n", k, settings[k])
	}
	confPath := filepath.Join(data, "postgresql.auto.conf")
	if err := appendFile(confPath, conf.Bytes()); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testenv %s: %w", name, err)
	}
	// Local connections are trusted; the tests create unprivileged roles
	// and connect as them to check privilege refusals.
	hba := "local all all trust\nhost all all 127.0.0.1/32 trust\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testenv %s: %w", name, err)
	}
	if c.runAs != "" {
		if err := chownTo(dir, c.runAs); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testenv %s: %w", name, err)
		}
	}
	for attempt := 0; ; attempt++ {
		c.Port, err = freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testenv %s: %w", name, err)
		}
		if err = c.start(ctx); err == nil {
			return c, nil
		}
		if attempt == 3 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

func (c *Cluster) start(ctx context.Context) error {
	data := filepath.Join(c.Dir, "data")
	out, err := c.run(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", data,
		"-l", filepath.Join(c.Dir, "server.log"), "-o", "-p "+strconv.Itoa(c.Port))
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(c.Dir, "server.log"))
		return fmt.Errorf("testenv %s: pg_ctl start: %w: %s %s", c.Name, err, lastLines(out, 3), lastLines(log, 5))
	}
	return nil
}

// Restart stops the server (immediately, like a crash, when immediate is
// set) and starts it again on the same port.
func (c *Cluster) Restart(ctx context.Context, immediate bool) error {
	mode := "fast"
	if immediate {
		mode = "immediate"
	}
	if out, err := c.run(ctx, "pg_ctl", "stop", "-w", "-m", mode, "-D", filepath.Join(c.Dir, "data")); err != nil {
		return fmt.Errorf("testenv %s: pg_ctl stop: %w: %s", c.Name, err, lastLines(out, 3))
	}
	return c.start(ctx)
}

// Stop stops the server and removes its directory.
func (c *Cluster) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := c.run(ctx, "pg_ctl", "stop", "-w", "-m", "immediate", "-D", filepath.Join(c.Dir, "data"))
	if rmErr := os.RemoveAll(c.Dir); err == nil {
		err = rmErr
	}
	return err
}

// DSN is the connection string of a database on this cluster, as the
// postgres superuser (or user, if given).
func (c *Cluster) DSN(db string, user ...string) string {
	u := "postgres"
	if len(user) > 0 {
		u = user[0]
	}
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", u, c.Port, db)
}

// LogPath is the server log, useful in test failures.
func (c *Cluster) LogPath() string { return filepath.Join(c.Dir, "server.log") }

// CreateDB creates a fresh database and returns its DSN.
func (c *Cluster) CreateDB(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("testenv %s: %w", c.Name, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("testenv %s: create database %s: %w", c.Name, name, err)
	}
	return c.DSN(name), nil
}

// Bin is the path of one of the cluster's PostgreSQL programs (pgbench...).
func (c *Cluster) Bin(program string) string { return filepath.Join(c.bin, program) }

func (c *Cluster) run(ctx context.Context, program string, args ...string) ([]byte, error) {
	argv := append([]string{filepath.Join(c.bin, program)}, args...)
	if c.cpus != "" {
		// The postmaster and every backend inherit the affinity.
		argv = append([]string{"taskset", "-c", c.cpus}, argv...)
	}
	if c.runAs != "" {
		argv = append([]string{"runuser", "-u", c.runAs, "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = c.Dir
	// The server must outlive neither its caller's terminal nor its signals
	// aimed at the caller's process group (Ctrl-C in the demo).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd.CombinedOutput()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func chownTo(dir, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("user %s (needed to run PostgreSQL as non-root): %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

func appendFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
