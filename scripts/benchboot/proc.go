package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// group is a running server: a process group started in a namespace, and
// the log its leader writes.
type group struct {
	pgid    int
	logPath string
	done    <-chan error // result of the leader's Wait
}

// startServer starts argv in its own process group inside ns, with its
// output in logPath. Pdeathsig kills the leader if benchboot dies without
// cleaning up; stop kills the whole group.
func startServer(ns *netNS, argv, env []string, dir, logPath string) (*group, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating server log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := ns.start(cmd); err != nil {
		return nil, fmt.Errorf("starting %s: %w", filepath.Base(argv[0]), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return &group{pgid: cmd.Process.Pid, logPath: logPath, done: done}, nil
}

// alive reports whether any process of the group is still running (zombies
// don't count).
func (g *group) alive() bool { return len(groupPIDs(g.pgid)) > 0 }

// stop sends SIGTERM to the group, waits up to 10 s for it to exit, then
// kills what is left.
func (g *group) stop() error {
	if err := syscall.Kill(-g.pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping process group %d: %w", g.pgid, err)
	}
	if g.waitGone(10 * time.Second) {
		return nil
	}
	_ = syscall.Kill(-g.pgid, syscall.SIGKILL)
	if g.waitGone(5 * time.Second) {
		return fmt.Errorf("process group %d ignored SIGTERM for 10s and was killed", g.pgid)
	}
	return fmt.Errorf("process group %d survives SIGKILL", g.pgid)
}

func (g *group) waitGone(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for g.alive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// log returns the server's log.
func (g *group) log() string {
	b, _ := os.ReadFile(g.logPath)
	return string(b)
}

// logTail returns the end of the server's log, formatted for an error message.
func (g *group) logTail() string {
	b := bytes.TrimSpace([]byte(g.log()))
	if len(b) == 0 {
		return ""
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return "; log: " + strings.ReplaceAll(string(b), "\n", " | ")
}

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat: 100
// on every Linux architecture Go supports.
const clockTicks = 100

// statFields returns the fields of /proc/PID/stat after the command name.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name is in parentheses and may contain anything.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return nil, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	return f, nil
}

// procStat returns the state and process group of pid from /proc/PID/stat.
func procStat(pid int) (state byte, pgrp int, err error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, 0, err
	}
	pgrp, err = strconv.Atoi(f[2])
	return f[0][0], pgrp, err
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
	pgid int
	mu   sync.Mutex
	base map[int]int64 // ticks of the processes alive at the start
	last map[int]int64 // latest ticks of every process seen
	stop chan struct{}
	done chan struct{}
}

// meter starts measuring the group's CPU time.
func (g *group) meter() *cpuMeter {
	m := &cpuMeter{pgid: g.pgid, base: map[int]int64{}, last: map[int]int64{}, stop: make(chan struct{}), done: make(chan struct{})}
	m.sample()
	maps.Copy(m.base, m.last)
	go func() {
		defer close(m.done)
		t := time.NewTicker(cpuSample)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
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
					if _, pgrp, err := procStat(pid); err == nil && pgrp == m.pgid {
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
		f, err := statFields(pid)
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
	close(m.stop)
	<-m.done
	m.sample()
	var ticks int64
	for pid, t := range m.last {
		ticks += t - m.base[pid]
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// groupPIDs lists the live (non-zombie) processes in process group pgid.
func groupPIDs(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, pgrp, err := procStat(pid)
		if err == nil && pgrp == pgid && state != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
		if g != nil && !g.alive() {
			return fmt.Errorf("server exited before %s%s", what, g.logTail())
		}
		if time.Now().After(deadline) {
			tail := ""
			if g != nil {
				tail = g.logTail()
			}
			return fmt.Errorf("no %s after %v: %w%s", what, timeout, err, tail)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}
