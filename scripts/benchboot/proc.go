package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// group is a running server: a process group started in a namespace, and
// the log its leader writes.
type group struct {
	benchkit.Group
	done <-chan error // result of the leader's Wait
}

// startServer starts argv in its own process group inside ns, with its
// output in logPath. Pdeathsig kills the leader if benchboot dies without
// cleaning up; Stop kills the whole group.
func startServer(ns *netNS, argv, env []string, dir, logPath string) (*group, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating server log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := benchkit.GroupCommand(argv, env, dir, logf)
	if err := ns.start(cmd); err != nil {
		return nil, fmt.Errorf("starting %s: %w", filepath.Base(argv[0]), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return &group{Group: benchkit.Group{PGID: cmd.Process.Pid, LogPath: logPath}, done: done}, nil
}

// cpuSample is how often a cpuMeter looks at the group's processes.
const cpuSample = 10 * time.Millisecond

// cpuMeter measures the CPU time (user and system) a process group uses
// while it runs. It samples every process of the group, because some
// servers' children are reaped automatically (tftpd-hpa ignores SIGCHLD)
// and their time never reaches the parent's cutime: a child that exits
// loses at most its last cpuSample of CPU time. Each process counts with
// its cutime and cstime, so short-lived helpers that a member waits for
// count too; a member child sampled before its parent waited for it then
// counts twice. None of the measured servers forks children it waits for
// per request (tftpd-hpa's per-transfer children are auto-reaped; dnsmasq,
// Kea, nginx and rackboot serve from long-lived processes).
type cpuMeter struct {
	pgid    int
	mu      sync.Mutex
	base    map[int]int64 // ticks of the processes alive at the start
	last    map[int]int64 // latest ticks of every process seen
	sampler *benchkit.Sampler
}

// meter starts measuring the group's CPU time.
func (g *group) meter() *cpuMeter {
	m := &cpuMeter{pgid: g.PGID, base: map[int]int64{}, last: map[int]int64{}}
	m.sample()
	maps.Copy(m.base, m.last)
	m.sampler = benchkit.StartSampler(cpuSample, m.sample)
	return m
}

// members returns the group's leader and its descendants in the group,
// found through /proc/PID/task/TID/children (cheaper than a scan of /proc).
func (m *cpuMeter) members() []int {
	pids := []int{m.pgid}
	for i := 0; i < len(pids) && i < 1024; i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pids[i]))
		for _, t := range tasks {
			b, _ := os.ReadFile(t)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					if _, pgrp, err := benchkit.ProcStat(pid); err == nil && pgrp == m.pgid {
						pids = append(pids, pid)
					}
				}
			}
		}
	}
	return pids
}

func (m *cpuMeter) sample() {
	for _, pid := range m.members() {
		f, err := benchkit.StatFields(pid)
		if err != nil {
			continue
		}
		var ticks int64
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			n, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += n
		}
		m.mu.Lock()
		m.last[pid] = ticks
		m.mu.Unlock()
	}
}

// end stops the meter and returns the CPU time used since it started.
func (m *cpuMeter) end() time.Duration {
	m.sampler.Stop()
	m.sample()
	var ticks int64
	for pid, t := range m.last {
		ticks += t - m.base[pid]
	}
	return benchkit.TicksDuration(ticks)
}

// poll calls try every 20 ms until it succeeds, g exits, ctx is done or
// timeout passes; what says what was awaited, for the error.
func poll(ctx context.Context, g *group, timeout time.Duration, what string, try func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := try()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if g != nil && !g.Alive() {
			return fmt.Errorf("server exited before %s%s", what, g.LogTail())
		}
		if time.Now().After(deadline) {
			tail := ""
			if g != nil {
				tail = g.LogTail()
			}
			return fmt.Errorf("no %s after %v: %w%s", what, timeout, err, tail)
		}
		if err := benchkit.SleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}
