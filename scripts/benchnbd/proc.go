package main

import (
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

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// startCmd starts argv in its own process group, so that stopping it also
// stops whatever it forked. Pdeathsig kills it if benchnbd dies without
// cleaning up. The returned channel receives the result of Wait.
func startCmd(argv, env []string, dir string, out io.Writer) (*exec.Cmd, <-chan error, error) {
	cmd := benchkit.GroupCommand(argv, env, dir, out)
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
	benchkit.Group
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
	g := &group{benchkit.Group{PGID: cmd.Process.Pid, LogPath: logPath}}
	if !daemon {
		return g, nil
	}
	// The starter forks the daemon and exits.
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("starting daemon: %w%s", err, g.LogTail())
		}
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-g.PGID, syscall.SIGKILL)
		return nil, fmt.Errorf("starting daemon: still in the foreground after 10s%s", g.LogTail())
	case <-ctx.Done():
		_ = syscall.Kill(-g.PGID, syscall.SIGKILL)
		return nil, ctx.Err()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(pidFile)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && pid > 0 {
			pgid, err := syscall.Getpgid(pid)
			if err != nil {
				return nil, fmt.Errorf("finding daemon %d: %w%s", pid, err, g.LogTail())
			}
			g.PGID = pgid
			return g, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("waiting for PID file %s: no PID after 10s%s", pidFile, g.LogTail())
		}
		if err := benchkit.SleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
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
	for _, pid := range benchkit.GroupPIDs(pgid) {
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
