package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
	"golang.org/x/sys/unix"
)

// The test network: a veth pair between a server and a client namespace.
var (
	serverIP   = netip.MustParseAddr("10.88.0.1")
	clientIP   = netip.MustParseAddr("10.88.0.2")
	subnet     = netip.MustParsePrefix("10.88.0.0/16")
	poolStart  = netip.MustParseAddr("10.88.1.0")
	poolEnd    = netip.MustParseAddr("10.88.255.254")
	serverIf   = "bs0" // interface in the server namespace
	clientIf   = "bc0" // interface in the client namespace
	nsPrefix   = "benchboot-"
	nsNameExpr = regexp.MustCompile(`^benchboot-([0-9]+)-(srv|cli)$`)
	dirExpr    = regexp.MustCompile(`^benchboot-([0-9]+)-[0-9]+$`)
)

// netNS is a network namespace made for the run.
type netNS struct {
	name string
	// spawn runs functions on one OS thread that stays inside the
	// namespace for the whole run. Processes are started there: their
	// Pdeathsig fires when the thread that started them exits, so that
	// thread must live as long as they do.
	spawn chan func()
	done  chan struct{}
}

func (n *netNS) path() string { return filepath.Join("/run/netns", n.name) }

// enter moves the calling goroutine's OS thread into the namespace. The
// caller must have locked the thread and must not unlock it: the runtime
// then ends the thread when the goroutine exits.
func (n *netNS) enter() error {
	fd, err := unix.Open(n.path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", n.name, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("entering namespace %s: %w", n.name, err)
	}
	return nil
}

// startSpawner starts the namespace's long-lived thread.
func (n *netNS) startSpawner() error {
	n.spawn = make(chan func())
	n.done = make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(n.done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := n.enter(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for f := range n.spawn {
			f()
		}
	}()
	return <-errc
}

// start starts cmd inside the namespace.
func (n *netNS) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	n.spawn <- func() { errc <- cmd.Start() }
	return <-errc
}

// do runs f on a fresh OS thread inside the namespace; sockets f opens
// belong to the namespace and can be used from any goroutine afterwards.
func (n *netNS) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := n.enter(); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// testbed is the pair of namespaces and the veth pair between them.
type testbed struct {
	srv, cli *netNS
}

func ipCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newTestbed creates the namespaces and links them. Nothing is created
// outside them: the veth pair is made inside the server namespace.
func newTestbed(ctx context.Context, mtu int) (tb *testbed, err error) {
	pid := strconv.Itoa(os.Getpid())
	tb = &testbed{
		srv: &netNS{name: nsPrefix + pid + "-srv"},
		cli: &netNS{name: nsPrefix + pid + "-cli"},
	}
	defer func() {
		if err != nil {
			tb.close()
		}
	}()
	m := strconv.Itoa(mtu)
	bits := strconv.Itoa(subnet.Bits())
	steps := [][]string{
		{"netns", "add", tb.srv.name},
		{"netns", "add", tb.cli.name},
		{"-n", tb.srv.name, "link", "add", serverIf, "mtu", m, "type", "veth", "peer", "name", clientIf, "mtu", m, "netns", tb.cli.name},
		{"-n", tb.srv.name, "addr", "add", serverIP.String() + "/" + bits, "dev", serverIf},
		{"-n", tb.cli.name, "addr", "add", clientIP.String() + "/" + bits, "dev", clientIf},
		{"-n", tb.srv.name, "link", "set", "lo", "up"},
		{"-n", tb.cli.name, "link", "set", "lo", "up"},
		{"-n", tb.srv.name, "link", "set", serverIf, "up"},
		{"-n", tb.cli.name, "link", "set", clientIf, "up"},
	}
	for _, s := range steps {
		if err := ipCmd(ctx, s...); err != nil {
			return tb, fmt.Errorf("creating the test network: %w", err)
		}
	}
	for _, n := range []*netNS{tb.srv, tb.cli} {
		if err := n.startSpawner(); err != nil {
			return tb, err
		}
	}
	return tb, nil
}

// close stops the spawner threads (killing, through Pdeathsig, any process
// still running from them) and deletes the namespaces with the veth pair.
func (tb *testbed) close() error {
	var errs []error
	for _, n := range []*netNS{tb.srv, tb.cli} {
		if n.spawn != nil {
			close(n.spawn)
			<-n.done
			n.spawn = nil
		}
		if _, err := os.Stat(n.path()); err == nil {
			// Not bound to the run's context: this runs after an interrupt too.
			errs = append(errs, ipCmd(context.Background(), "netns", "del", n.name))
		}
	}
	return errors.Join(errs...)
}

// removeStaleTestbeds deletes the namespaces of benchboot runs whose
// process is gone (killed before it could clean up).
func removeStaleTestbeds(log *slog.Logger) {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		m := nsNameExpr.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if runAlive(m[1]) {
			continue
		}
		log.Warn("removing a namespace left by an earlier run", "file", e.Name())
		if err := ipCmd(context.Background(), "netns", "del", e.Name()); err != nil {
			log.Warn("removing a stale namespace", "err", err)
		}
	}
}

// removeStaleDirs deletes the temporary directories of benchboot runs
// whose process is gone.
func removeStaleDirs(log *slog.Logger, parents ...string) {
	for _, parent := range parents {
		ents, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range ents {
			m := dirExpr.FindStringSubmatch(e.Name())
			if m == nil || !e.IsDir() {
				continue
			}
			if runAlive(m[1]) {
				continue
			}
			log.Warn("removing a directory left by an earlier run", "file", filepath.Join(parent, e.Name()))
			if err := os.RemoveAll(filepath.Join(parent, e.Name())); err != nil {
				log.Warn("removing a stale directory", "err", err)
			}
		}
	}
}

// runAlive reports whether the benchboot run with process ID pid is still
// going (a zombie is not).
func runAlive(pid string) bool {
	n, err := strconv.Atoi(pid)
	if err != nil {
		return false
	}
	state, _, err := benchkit.ProcStat(n)
	return err == nil && state != 'Z'
}
