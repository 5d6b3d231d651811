// Package netns builds throwaway networks of Linux network namespaces for
// tests: a bridge in a "switch" namespace and hosts attached to it by veth
// pairs, each with the MAC and address the test chooses. Nothing touches
// the host's own interfaces, so DHCP servers and clients can run for real
// without leaking a packet. Everything is removed in t.Cleanup.
//
// It needs root and iproute2.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/rackboot/rackboot/internal/testenv"
)

// Net is a bridged network of namespaces.
type Net struct {
	t      testing.TB
	prefix string // unique per Net, keeps names short (IFNAMSIZ is 16)
	Switch string // namespace holding the bridge "br0"
	hosts  int
}

// Host is a namespace attached to the bridge.
type Host struct {
	Name string // namespace name
	If   string // its interface to the bridge
	MAC  net.HardwareAddr
	IP   netip.Prefix // zero if none was assigned
}

// New creates an empty bridged network.
func New(t testing.TB) *Net {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.LookPath(t, "ip")
	var b [3]byte
	rand.Read(b[:])
	n := &Net{t: t, prefix: "rb" + hex.EncodeToString(b[:])}
	n.Switch = n.prefix + "sw"
	n.run("ip", "netns", "add", n.Switch)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.Switch).Run() })
	n.run("ip", "-n", n.Switch, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
	// No STP, no learning delay: a bridge that forwards at once.
	n.run("ip", "-n", n.Switch, "link", "set", "br0", "up")
	n.run("ip", "-n", n.Switch, "link", "set", "lo", "up")
	return n
}

func (n *Net) run(name string, args ...string) string {
	n.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// AddHost creates a namespace linked to the bridge with interface "eth0"
// of the given MAC and, if ip is valid, address.
func (n *Net) AddHost(mac net.HardwareAddr, ip netip.Prefix) *Host {
	n.t.Helper()
	n.hosts++
	h := &Host{Name: fmt.Sprintf("%sh%d", n.prefix, n.hosts), If: "eth0", MAC: mac, IP: ip}
	n.run("ip", "netns", "add", h.Name)
	n.t.Cleanup(func() { exec.Command("ip", "netns", "del", h.Name).Run() })
	peer := fmt.Sprintf("p%d", n.hosts)
	n.run("ip", "-n", h.Name, "link", "add", "eth0", "address", mac.String(), "type", "veth", "peer", "name", peer, "netns", n.Switch)
	n.run("ip", "-n", n.Switch, "link", "set", peer, "master", "br0", "up")
	n.run("ip", "-n", h.Name, "link", "set", "lo", "up")
	n.run("ip", "-n", h.Name, "link", "set", "eth0", "up")
	if ip.IsValid() {
		n.run("ip", "-n", h.Name, "addr", "add", ip.String(), "dev", "eth0")
	}
	return h
}

// Command returns a command that runs inside the host's namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.Name, name}, args...)...)
}

// Run runs a command inside the host's namespace and returns its combined
// output, failing the test if it fails.
func (h *Host) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := h.Command(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s %s: %v\n%s", h.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs f on an OS thread inside the host's namespace, and returns its
// error. Sockets f opens stay in the namespace after it returns, so a test
// can use them from any goroutine. The thread ends with f: it never runs
// other goroutines from the wrong namespace.
func (h *Host) Do(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		ns, err := os.Open("/run/netns/" + h.Name)
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("entering namespace %s: %w", h.Name, err)
			return
		}
		done <- f()
	}()
	return <-done
}

// MAC returns a locally administered MAC whose last byte is n.
func MAC(n byte) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x00, 0x7b, 0x00, n}
}
