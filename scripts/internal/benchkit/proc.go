package benchkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ClockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat: 100
// on every Linux architecture Go supports.
const ClockTicks = 100

// TicksDuration converts CPU time in clock ticks to a duration.
func TicksDuration(ticks int64) time.Duration {
	return time.Duration(ticks) * time.Second / ClockTicks
}

// GroupCommand returns a command that runs argv in its own process group,
// so that stopping the group also stops whatever it forked, with env added
// to this process's environment, in dir, and with its output in out.
// Pdeathsig kills the leader if the benchmark dies without cleaning up.
func GroupCommand(argv, env []string, dir string, out io.Writer) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Group is a running server: a process group and the log its leader
// writes.
type Group struct {
	PGID    int
	LogPath string
}

// Alive reports whether any process of the group is still running
// (zombies don't count).
func (g *Group) Alive() bool { return len(GroupPIDs(g.PGID)) > 0 }

// Stop sends SIGTERM to the group, waits up to 10 s for it to exit, then
// kills what is left.
func (g *Group) Stop() error {
	if err := syscall.Kill(-g.PGID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping process group %d: %w", g.PGID, err)
	}
	if g.waitGone(10 * time.Second) {
		return nil
	}
	_ = syscall.Kill(-g.PGID, syscall.SIGKILL)
	if g.waitGone(5 * time.Second) {
		return fmt.Errorf("process group %d ignored SIGTERM for 10s and was killed", g.PGID)
	}
	return fmt.Errorf("process group %d survives SIGKILL", g.PGID)
}

func (g *Group) waitGone(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for g.Alive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// Log returns the server's log.
func (g *Group) Log() string {
	b, _ := os.ReadFile(g.LogPath)
	return string(b)
}

// LogTail returns the end of the server's log, formatted for an error
// message.
func (g *Group) LogTail() string { return LogTail(g.LogPath) }

// LogTail returns the end of the log at path, formatted for an error
// message: "; log: " and its last 600 bytes on one line, or "" for an
// empty or missing log.
func LogTail(path string) string {
	b, err := os.ReadFile(path)
	b = bytes.TrimSpace(b)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return "; log: " + strings.ReplaceAll(string(b), "\n", " | ")
}

// StatFields returns the fields of /proc/PID/stat after the command name:
// f[0] is the state, f[2] the process group, f[11] to f[14] utime, stime,
// cutime and cstime.
func StatFields(pid int) ([]string, error) {
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

// ProcStat returns the state and process group of pid from /proc/PID/stat.
func ProcStat(pid int) (state byte, pgrp int, err error) {
	f, err := StatFields(pid)
	if err != nil {
		return 0, 0, err
	}
	pgrp, err = strconv.Atoi(f[2])
	return f[0][0], pgrp, err
}

// GroupPIDs lists the live (non-zombie) processes in process group pgid.
func GroupPIDs(pgid int) []int {
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
		state, pgrp, err := ProcStat(pid)
		if err == nil && pgrp == pgid && state != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// SleepCtx sleeps for d or until ctx is done.
func SleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sampler calls a function periodically on a goroutine of its own until
// it is stopped.
type Sampler struct {
	stop chan struct{}
	done chan struct{}
}

// StartSampler calls sample every period until Stop.
func StartSampler(period time.Duration, sample func()) *Sampler {
	s := &Sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return s
}

// Stop stops the sampling and waits until the last call of the function
// has returned.
func (s *Sampler) Stop() {
	close(s.stop)
	<-s.done
}
