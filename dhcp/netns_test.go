//go:build linux

package dhcp

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/testenv"
	"golang.org/x/sys/unix"
)

// A lan is a test Ethernet segment: a bridge in a "switch" network
// namespace, and hosts, each a network namespace whose "eth0" is plugged
// into the bridge. Nothing a test sends leaves these namespaces, and
// t.Cleanup deletes them (which deletes their interfaces).
type lan struct {
	sw    string
	hosts map[string]*host
}

// A host is one namespace on a lan.
type host struct {
	name string
	ns   string // namespace name, under /run/netns
	mac  net.HardwareAddr
}

var lanSeq atomic.Int32

// newLAN builds a lan with the named hosts; host i gets MAC
// 02:00:00:00:ff:0i. It skips unless run as root with ip(8).
func newLAN(t *testing.T, names ...string) *lan {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.LookPath(t, "ip")
	prefix := fmt.Sprintf("rbdhcp%d-%d", os.Getpid(), lanSeq.Add(1))
	l := &lan{sw: prefix + "-sw", hosts: make(map[string]*host)}
	var created []string
	t.Cleanup(func() {
		for _, ns := range created {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", l.sw)
	created = append(created, l.sw)
	ip("-n", l.sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
	ip("-n", l.sw, "link", "set", "br0", "up")
	for i, name := range names {
		h := &host{name: name, ns: prefix + "-" + name, mac: net.HardwareAddr{2, 0, 0, 0, 0xff, byte(i + 1)}}
		ip("netns", "add", h.ns)
		created = append(created, h.ns)
		port := fmt.Sprintf("p%d", i)
		ip("-n", l.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		ip("-n", l.sw, "link", "set", port, "master", "br0", "up")
		ip("-n", h.ns, "link", "set", "eth0", "address", h.mac.String())
		// No duplicate address detection: link-local addresses are usable
		// at once, so router advertisements can be sent straight away.
		h.sysctl(t, "net/ipv6/conf/eth0/accept_dad", "0")
		ip("-n", h.ns, "link", "set", "lo", "up")
		ip("-n", h.ns, "link", "set", "eth0", "up")
		l.hosts[name] = h
	}
	l.waitReady(t, len(names))
	return l
}

// waitReady waits until every bridge port forwards and every host's eth0
// is up with a usable IPv6 link-local address. Carrier changes reach the
// bridge and IPv6 through the kernel's link watcher, which can lag up to
// a second behind "ip link set up"; packets sent before then are lost.
func (l *lan) waitReady(t *testing.T, ports int) {
	t.Helper()
	out := func(args ...string) string {
		b, _ := exec.Command("ip", args...).CombinedOutput()
		return string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ready := true
		for i := range ports {
			if !strings.Contains(out("-n", l.sw, "-d", "link", "show", fmt.Sprintf("p%d", i)), "state forwarding") {
				ready = false
			}
		}
		for _, h := range l.hosts {
			addrs := out("-n", h.ns, "-6", "addr", "show", "dev", "eth0", "scope", "link")
			if !strings.Contains(out("-n", h.ns, "link", "show", "eth0"), "state UP") ||
				!strings.Contains(addrs, "fe80::") || strings.Contains(addrs, "tentative") {
				ready = false
			}
		}
		if ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("test network not ready after 10s:\n%s", out("-n", l.sw, "-d", "link", "show"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *lan) host(name string) *host { return l.hosts[name] }

// sysctl writes a /proc/sys value inside h's namespace.
func (h *host) sysctl(t *testing.T, key, value string) {
	t.Helper()
	h.do(t, func() {
		if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
			t.Errorf("sysctl %s=%s in %s: %v", key, value, h.name, err)
		}
	})
}

// addAddr gives h's eth0 an address, e.g. "10.0.0.1/24".
func (h *host) addAddr(t *testing.T, prefix string) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", h.ns, "addr", "add", prefix, "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add %s in %s: %v\n%s", prefix, h.name, err, out)
	}
}

// enter moves the calling goroutine's (locked) OS thread into h's
// namespace.
func (h *host) enter() error {
	fd, err := unix.Open("/run/netns/"+h.ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Setns(fd, unix.CLONE_NEWNET)
}

// do runs fn inside h's namespace and waits for it. fn must not start
// goroutines that need the namespace (sockets already open are fine).
func (h *host) do(t testing.TB, fn func()) {
	t.Helper()
	done := make(chan error)
	go func() {
		// The thread is never unlocked: it exits with the goroutine, so
		// its namespace can't leak into other goroutines.
		runtime.LockOSThread()
		if err := h.enter(); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("entering namespace %s: %v", h.ns, err)
	}
}

// goDo runs fn inside h's namespace in the background; the returned
// channel yields its error.
func (h *host) goDo(fn func() error) <-chan error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := h.enter(); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return done
}

// command returns a command that runs inside h's namespace.
func (h *host) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// serve runs srv.ListenAndServe inside h's namespace until the test ends,
// then checks that it stopped cleanly. It returns once the server's
// sockets are open (or it failed).
func (h *host) serve(t *testing.T, srv *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := h.goDo(func() error { return srv.ListenAndServe(ctx) })
	ended := false
	t.Cleanup(func() {
		cancel()
		if ended {
			return
		}
		if err := <-done; err != nil {
			t.Errorf("ListenAndServe: %v", err)
		}
	})
	// ListenAndServe has no "ready" signal; wait until port 67 is bound.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			ended = true
			t.Fatalf("ListenAndServe returned before serving: %v", err)
		default:
		}
		bound := false
		h.do(t, func() { bound = udpPortBound(ServerPort) })
		if bound {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("server did not bind port %d", ServerPort)
}

// udpPortBound reports whether a UDP socket is bound to port in the
// calling thread's namespace, from its UDP socket table.
func udpPortBound(port int) bool {
	// Read the thread's own namespace's table: binding a probe socket
	// instead would make the server's bind fail when the two race.
	b, err := os.ReadFile("/proc/thread-self/net/udp")
	if err != nil {
		return false
	}
	suffix := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 1 && strings.HasSuffix(f[1], suffix) {
			return true
		}
	}
	return false
}
