package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/promoted/promoted/testenv"
)

// cpuSplit is where the source cluster's CPU went during a window, in
// seconds, by whose work it was: the other tenants' sessions (the
// application's role) and their pgbench client, the move (the mover's
// sessions and every walsender, which is where a native subscription's
// copy and decoding run), and the cluster's own background processes
// (and the bench's superuser bookkeeping). Idle is the source's core
// left idle, when the source is pinned to one.
type cpuSplit struct {
	neighbours, client, move, background, idle float64
	// walsender is the part of move spent in walsenders: decoding, for
	// promoted; decoding and the initial copy, for a native subscription.
	walsender float64
	// promoted is promoted's own process, sampled with the target.
	promoted float64
}

func (s cpuSplit) String() string {
	return fmt.Sprintf("other tenants' sessions %.1f s, their pgbench %.1f s, the move %.1f s (%.1f s of it in walsenders), background %.1f s, idle %.1f s",
		s.neighbours, s.client, s.move, s.walsender, s.background, s.idle)
}

// cpuSampler reads /proc every 250 ms for the source postmaster's
// children and pgbench, keeping each process's CPU since the window
// began (a process that exits loses at most its last 250 ms).
type cpuSampler struct {
	postmaster int
	cpus       string
	tick       float64
	stop, done chan struct{}

	// procs is written by one sampling goroutine at a time and read by
	// finish after the last.
	procs map[int]*procCPU
	idle0 float64
}

type procCPU struct {
	class       string
	first, last float64
}

// sampleSourceCPU starts sampling the source cluster in dataDir.
func sampleSourceCPU(dataDir string) (*cpuSampler, error) { return sampleCPU(dataDir, sourceCPUs) }

// sampleCPU starts sampling the cluster in dataDir, pinned to cpus, and
// every pgbench and promoted process.
func sampleCPU(dataDir, cpus string) (*cpuSampler, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return nil, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return nil, fmt.Errorf("postmaster.pid: %w", err)
	}
	s := &cpuSampler{postmaster: pid, cpus: cpus, tick: 100, stop: make(chan struct{}), done: make(chan struct{}), procs: map[int]*procCPU{}}
	s.idle0 = coreIdle(cpus)
	s.sample(true)
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				s.sample(false)
				return
			case <-time.After(250 * time.Millisecond):
				s.sample(false)
			}
		}
	}()
	return s, nil
}

// finish stops sampling and returns the split.
func (s *cpuSampler) finish() cpuSplit {
	close(s.stop)
	<-s.done
	var c cpuSplit
	if s.cpus != "" {
		c.idle = coreIdle(s.cpus) - s.idle0
	}
	for _, p := range s.procs {
		d := p.last - p.first
		switch p.class {
		case "neighbours":
			c.neighbours += d
		case "client":
			c.client += d
		case "move":
			c.move += d
		case "walsender":
			c.move += d
			c.walsender += d
		case "promoted":
			c.promoted += d
		default:
			c.background += d
		}
	}
	return c
}

func (s *cpuSampler) sample(first bool) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime stime: the fields after the
		// comm's closing parenthesis, which may itself hold spaces.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		comm := string(stat[bytes.IndexByte(stat, '(')+1 : i])
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if ppid != s.postmaster && pid != s.postmaster && comm != "pgbench" && comm != "promoted" {
			continue
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		secs := (ut + st) / s.tick
		class, title := "client", ""
		if comm == "promoted" {
			class = "promoted"
		} else if comm != "pgbench" {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			title = string(bytes.TrimRight(b, "\x00"))
			class = classify(title)
		}
		p := s.procs[pid]
		if p == nil {
			p = &procCPU{}
			if first {
				p.first = secs
			}
			s.procs[pid] = p
		}
		// An exiting process's title reads empty: it keeps its class.
		if title != "" || class == "client" || class == "promoted" {
			p.class = class
		}
		p.last = secs
	}
}

// classify reads a backend's process title ("postgres: ROLE DB HOST
// ACTIVITY", "postgres: walsender ROLE ...", "postgres: checkpointer").
func classify(title string) string {
	f := strings.Fields(strings.TrimPrefix(title, "postgres: "))
	switch {
	case len(f) == 0:
		return "background"
	case f[0] == "walsender":
		return "walsender"
	case f[0] == testenv.Mover, f[0] == "logical":
		// The mover's sessions; on a target, a native subscription's
		// apply and table sync workers.
		return "move"
	case f[0] == testenv.App:
		return "neighbours"
	}
	return "background"
}

// coreIdle is the idle and iowait seconds of one CPU so far.
func coreIdle(cpu string) float64 {
	if cpu == "" {
		return 0
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[0] == "cpu"+cpu {
			idle, _ := strconv.ParseFloat(f[4], 64)
			iowait, _ := strconv.ParseFloat(f[5], 64)
			return (idle + iowait) / 100
		}
	}
	return 0
}
