package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// group is a server started by the benchmark in a namespace, in a process
// group of its own.
type group struct {
	name    string
	pgid    int
	logPath string
	done    chan struct{}
	err     error
}

// startGroup starts argv inside the network namespace ns (ip netns exec
// execs it, so the process keeps its group), with its output in logPath.
// Pdeathsig kills it if the benchmark dies without cleaning up.
func startGroup(ns string, argv []string, logPath string) (*group, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := benchkit.GroupCommand(append([]string{"ip", "netns", "exec", ns}, argv...), nil, "", logf)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	g := &group{name: argv[0], pgid: cmd.Process.Pid, logPath: logPath, done: make(chan struct{})}
	go func() {
		g.err = cmd.Wait()
		close(g.done)
	}()
	return g, nil
}

// waitFor polls ready every 20 ms until it holds, the process exits, ctx
// ends or timeout passes.
func (g *group) waitFor(ctx context.Context, timeout time.Duration, what string, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ready() {
		select {
		case <-g.done:
			return fmt.Errorf("%s exited before %s: %v%s", g.name, what, g.err, g.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling for readiness
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %v%s", what, timeout, g.logTail())
		}
	}
	return nil
}

// stop sends SIGTERM to the group, waits up to 5 s, then kills it.
func (g *group) stop() error {
	if err := syscall.Kill(-g.pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping %s: %w", g.name, err)
	}
	select {
	case <-g.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	syscall.Kill(-g.pgid, syscall.SIGKILL)
	<-g.done
	return fmt.Errorf("%s ignored SIGTERM for 5s and was killed", g.name)
}

// logTail is the end of the group's log, for an error message.
func (g *group) logTail() string { return benchkit.LogTail(g.logPath) }

// Work directories are /var/tmp/benche2e-PID-*; each lists the network
// namespaces it made in a file, so that a run killed before it could
// clean up (SIGKILL) is cleaned up by the next one.
var (
	workDirExpr = regexp.MustCompile(`^benche2e-([0-9]+)-[0-9]+$`)
	nsFile      = "netns"
	// keptFile marks a directory -keep kept: its logs stay.
	keptFile = "KEPT"
)

// recordNamespace notes a namespace the run made.
func recordNamespace(dir, ns string) error {
	f, err := os.OpenFile(filepath.Join(dir, nsFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, ns)
	return errors.Join(err, f.Close())
}

// removeStale cleans up after earlier runs whose process is gone: it kills
// the processes they started (found by the work directory on their command
// line), deletes their namespaces and removes the directory.
func removeStale(parent string, log io.Writer) {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range ents {
		m := workDirExpr.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() || alive(m[1]) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		if _, err := os.Stat(filepath.Join(dir, keptFile)); err == nil {
			continue
		}
		fmt.Fprintf(log, "cleaning up after an earlier run: %s\n", dir)
		for _, pid := range processesMentioning(dir + "/") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if b, err := os.ReadFile(filepath.Join(dir, nsFile)); err == nil {
			for _, ns := range strings.Fields(string(b)) {
				if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
					exec.Command("ip", "netns", "del", ns).Run()
				}
			}
		}
		os.RemoveAll(dir)
	}
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// processesMentioning lists the processes whose command line contains s.
func processesMentioning(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// otherGuests counts the QEMU processes running that this run did not
// start (another user's VMs compete for the same CPUs).
func otherGuests(ours string) int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || !bytes.HasPrefix(comm, []byte("qemu-system")) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if !bytes.Contains(cmdline, []byte(ours)) {
			n++
		}
	}
	return n
}
