package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// startCmd starts argv in its own process group, so that stopping it also
// stops whatever it forked. Pdeathsig kills it if benchnbd dies without
// cleaning up. The returned channel receives the result of Wait.
func startCmd(argv, env []string, dir string, out io.Writer) (*exec.Cmd, <-chan error, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Don't let a grandchild holding the output pipe block Wait.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting %s: %w", filepath.Base(argv[0]), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return cmd, done, nil
}

// group is a running server: a process group and the log its leader writes.
type group struct {
	pgid    int
	logPath string
}

// startServer starts a server and returns its process group. A daemon is
// followed through its PID file after the starting process exits.
func startServer(ctx context.Context, argv, env []string, dir, logPath, pidFile string, daemon bool) (*group, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating server log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd, done, err := startCmd(argv, env, dir, logf)
	if err != nil {
		return nil, err
	}
	g := &group{pgid: cmd.Process.Pid, logPath: logPath}
	if !daemon {
		return g, nil
	}
	// The starter forks the daemon and exits.
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("starting daemon: %w%s", err, g.logTail())
		}
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-g.pgid, syscall.SIGKILL)
		return nil, fmt.Errorf("starting daemon: still in the foreground after 10s%s", g.logTail())
	case <-ctx.Done():
		_ = syscall.Kill(-g.pgid, syscall.SIGKILL)
		return nil, ctx.Err()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(pidFile)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && pid > 0 {
			pgid, err := syscall.Getpgid(pid)
			if err != nil {
				return nil, fmt.Errorf("finding daemon %d: %w%s", pid, err, g.logTail())
			}
			g.pgid = pgid
			return g, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("waiting for PID file %s: no PID after 10s%s", pidFile, g.logTail())
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
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

// logTail returns the end of the server's log, formatted for an error message.
func (g *group) logTail() string {
	b, err := os.ReadFile(g.logPath)
	b = bytes.TrimSpace(b)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return "; log: " + strings.ReplaceAll(string(b), "\n", " | ")
}

// statFields returns the fields of /proc/PID/stat after the command name:
// f[0] is the state, f[2] the process group, f[11] and f[12] utime and stime.
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
	if len(f) < 13 {
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

// layerBytes returns the allocated size (st_blocks*512) of the write layer:
// the regular files under dir, plus the files under dir that processes of
// group pgid hold open, which catches temporary files that were unlinked
// right after creation (qemu-nbd --snapshot, nbdkit's cow filter). Each
// inode is counted once.
func layerBytes(dir string, pgid int) (int64, error) {
	type key struct{ dev, ino uint64 }
	seen := map[key]bool{}
	var total int64
	add := func(fi fs.FileInfo) {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || !fi.Mode().IsRegular() {
			return
		}
		k := key{st.Dev, st.Ino}
		if !seen[k] {
			seen[k] = true
			total += st.Blocks * 512
		}
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a file went away while we walked
			}
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := os.Lstat(path); err == nil {
				add(fi)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("walking write layer %s: %w", dir, err)
	}
	if pgid <= 0 {
		return total, nil
	}
	prefix := filepath.Clean(dir) + "/"
	for _, pid := range groupPIDs(pgid) {
		fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			p := filepath.Join(fdDir, fd.Name())
			target, err := os.Readlink(p)
			if err != nil || !strings.HasPrefix(strings.TrimSuffix(target, " (deleted)"), prefix) {
				continue
			}
			if fi, err := os.Stat(p); err == nil {
				add(fi)
			}
		}
	}
	return total, nil
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
