package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/eventtest"
	"github.com/rackboot/rackboot/nbd"
	"github.com/rackboot/rackboot/nbd/kernel"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln
}

func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// fakeKernel stands for the driver: it holds the device's socket (by its
// local address), answers Reconfigure like nbd_genl_reconfigure (a new
// socket replaces a dead one; with no dead socket it is dropped and the
// call still succeeds) and notifies dead links. It counts the calls it
// gets, for tests to wait on.
type fakeKernel struct {
	mu    sync.Mutex
	local netip.AddrPort // the device's socket; invalid when dead
	dead  chan int
	// reconfs counts Reconfigure calls, checks calls to Established.
	reconfs, checks eventtest.Counter
}

func (f *fakeKernel) Next(ctx context.Context) (int, error) {
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case i, ok := <-f.dead:
		if !ok {
			return 0, net.ErrClosed
		}
		return i, nil
	}
}

func (f *fakeKernel) Close() error { return nil }

func (f *fakeKernel) kill(notify bool) {
	f.mu.Lock()
	f.local = netip.AddrPort{}
	f.mu.Unlock()
	if notify {
		f.dead <- 0
	}
}

func (f *fakeKernel) Reconfigure(_ context.Context, index int, conn *net.TCPConn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.reconfs.Add()
	if index != 0 {
		return errors.New("no such device")
	}
	if !f.local.IsValid() {
		f.local = netip.MustParseAddrPort(conn.LocalAddr().String())
	}
	return nil
}

func (f *fakeKernel) Established(netip.AddrPort) ([]netip.AddrPort, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.checks.Add()
	if !f.local.IsValid() {
		return nil, nil
	}
	return []netip.AddrPort{f.local}, nil
}

// started waits for the Keeper's first look at the TCP table: by then it
// listens for notifications.
func (f *fakeKernel) started(t *testing.T) {
	t.Helper()
	f.checks.Wait(t, 1, "the Keeper looked at the TCP table")
}

func (f *fakeKernel) connected() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.local.IsValid()
}

func (f *fakeKernel) reconfigured() int { return f.reconfs.Count() }

// server is a stand-in appliance: dials fail while it is down. It counts
// dials, for tests to wait on.
type server struct {
	mu    sync.Mutex
	down  bool
	addr  string
	size  int64
	dials eventtest.Counter
}

func (s *server) Dial(ctx context.Context, addr, export string) (*net.TCPConn, nbd.ExportDetails, error) {
	s.mu.Lock()
	down, size := s.down, s.size
	s.mu.Unlock()
	defer s.dials.Add()
	if down {
		return nil, nbd.ExportDetails{}, errors.New("connection refused")
	}
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		return nil, nbd.ExportDetails{}, err
	}
	return c.(*net.TCPConn), nbd.ExportDetails{Name: export, Size: size}, nil
}

func (s *server) set(down bool, size int64) {
	s.mu.Lock()
	s.down, s.size = down, size
	s.mu.Unlock()
}

func newKeeper(t *testing.T) (*Keeper, *fakeKernel, *server, chan Reconnect) {
	ln := listen(t)
	first := dialTCP(t, ln.Addr().String())
	t.Cleanup(func() { first.Close() })
	fk := &fakeKernel{local: netip.MustParseAddrPort(first.LocalAddr().String()), dead: make(chan int, 4)}
	srv := &server{addr: ln.Addr().String(), size: 1 << 20}
	got := make(chan Reconnect, 4)
	k := &Keeper{
		Index: 0, Server: netip.MustParseAddrPort(ln.Addr().String()), Export: "root@tok", Size: 1 << 20,
		PollInterval: time.Hour, MaxBackoff: 20 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(t.Output(), nil)),
		OnReconnect: func(r Reconnect) { got <- r },
		Dial:        srv.Dial, Reconfigure: fk.Reconfigure, Established: fk.Established,
		Watch: func() (LinkWatcher, error) { return fk, nil },
	}
	return k, fk, srv, got
}

// awaitReconnect returns the next reconnect reported on got.
func awaitReconnect(t *testing.T, got <-chan Reconnect) Reconnect {
	t.Helper()
	select {
	case r := <-got:
		return r
	case <-time.After(eventtest.Within):
		t.Fatal("no reconnect")
		return Reconnect{}
	}
}

// noReconnect fails the test if a reconnect was reported on got.
func noReconnect(t *testing.T, got <-chan Reconnect, why string) {
	t.Helper()
	select {
	case r := <-got:
		t.Errorf("reconnect %+v reported %s", r, why)
	default:
	}
}

func runKeeper(t *testing.T, k *Keeper) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}

func TestKeeperReconnectsAfterNotification(t *testing.T) {
	t.Parallel()
	k, fk, srv, got := newKeeper(t)
	runKeeper(t, k)
	fk.started(t)
	srv.set(true, 1<<20)
	fk.kill(true)
	srv.dials.Wait(t, 1, "dials to the server that is down")
	firstTry := time.Now()
	srv.dials.Wait(t, 3, "dials to the server that is down")
	if fk.connected() {
		t.Fatal("reconnected while the server was down")
	}
	if st := k.Status(); st.Connected {
		t.Errorf("Status while down = %+v; want Connected false", st)
	}
	up := time.Now()
	srv.set(false, 1<<20)
	r := awaitReconnect(t, got)
	// Every dial was part of this reconnect: the link was up until the
	// notification, and the poll interval is an hour.
	if dials := srv.dials.Count(); r.Attempts != dials || r.Attempts < 4 || r.LastErr != "connection refused" {
		t.Errorf("Reconnect = %+v; want %d attempts (3 or more refused, then one that worked), the server's error", r, dials)
	}
	if outage := up.Sub(firstTry); r.Down < outage {
		t.Errorf("Reconnect.Down = %v; want at least %v, from a failed dial to the server coming back", r.Down, outage)
	}
	if !fk.connected() {
		t.Error("the kernel has no socket after the reconnect")
	}
	if st := k.Status(); !st.Connected || st.Reconnects != 1 {
		t.Errorf("Status = %+v; want connected, 1 reconnect", st)
	}
}

// Without a notification (lost, or none subscribed), polling finds the dead
// connection.
func TestKeeperPollFindsDeadConnection(t *testing.T) {
	t.Parallel()
	k, fk, _, got := newKeeper(t)
	k.PollInterval = 10 * time.Millisecond
	k.Watch = func() (LinkWatcher, error) { return nil, kernel.ErrNoDriver }
	runKeeper(t, k)
	fk.started(t)
	fk.kill(false)
	awaitReconnect(t, got)
}

// A notification for the root's device is believed whatever the TCP
// table shows: with the link alive, the kernel declines the socket offered
// and nothing is reported; with it dead, the root is reconnected even
// though another connection to the appliance (a build's own) is in the
// table. Notifications for other devices are ignored.
func TestKeeperBelievesNotifications(t *testing.T) {
	t.Parallel()
	k, fk, srv, got := newKeeper(t)
	foreign := dialTCP(t, srv.addr)
	defer foreign.Close()
	k.Established = func(remote netip.AddrPort) ([]netip.AddrPort, error) {
		locals, err := fk.Established(remote)
		return append(locals, netip.MustParseAddrPort(foreign.LocalAddr().String())), err
	}
	logs := eventtest.NewLogCounter(k.Logger.Handler())
	k.Logger = slog.New(logs)
	runKeeper(t, k)
	fk.started(t)
	fk.dead <- 3 // another device
	fk.dead <- 0 // ours, but alive
	logs.Of("root connection was alive after all").Wait(t, 1, "the kernel declining the socket offered for the live link")
	if n := srv.dials.Count(); n != 1 {
		t.Errorf("%d dials; want 1, for our device's notification only", n)
	}
	noReconnect(t, got, "for a live link")
	if st := k.Status(); !st.Connected || st.Reconnects != 0 {
		t.Errorf("Status = %+v; want connected, 0 reconnects", st)
	}

	fk.kill(true)
	if r := awaitReconnect(t, got); r.Attempts != 1 {
		t.Errorf("Reconnect = %+v; want one attempt", r)
	}
	if st := k.Status(); !st.Connected || st.Reconnects != 1 {
		t.Errorf("Status = %+v; want connected, 1 reconnect", st)
	}
}

// An export that changed size is never attached.
func TestKeeperRefusesOtherSize(t *testing.T) {
	t.Parallel()
	k, fk, srv, got := newKeeper(t)
	runKeeper(t, k)
	fk.started(t)
	srv.set(false, 2<<20)
	fk.kill(true)
	srv.dials.Wait(t, 3, "dials") // the first two attempts are over
	if n := fk.reconfigured(); n != 0 {
		t.Fatalf("%d reconfigures with an export of another size", n)
	}
	srv.set(false, 1<<20)
	r := awaitReconnect(t, got)
	if !strings.Contains(r.LastErr, strconv.Itoa(2<<20)+" bytes") {
		t.Errorf("Reconnect.LastErr = %q; want the size refused", r.LastErr)
	}
	if n := fk.reconfigured(); n != 1 {
		t.Errorf("%d reconfigures; want 1, once the size is right", n)
	}
}

// A link that died before the Keeper subscribed (its notification lost)
// is reconnected at start.
func TestKeeperReconnectsDeadLinkAtStart(t *testing.T) {
	t.Parallel()
	k, fk, _, got := newKeeper(t)
	fk.kill(false)
	runKeeper(t, k)
	awaitReconnect(t, got)
}

// A TCP table that can't see the connection (another network namespace)
// is given up on after a few reconnects the kernel accepts without a
// trace, instead of reconnecting forever.
func TestKeeperBlindTCPTable(t *testing.T) {
	t.Parallel()
	k, fk, _, got := newKeeper(t)
	k.Established = func(netip.AddrPort) ([]netip.AddrPort, error) { return nil, nil }
	logs := eventtest.NewLogCounter(slog.NewTextHandler(t.Output(), nil))
	k.Logger = slog.New(logs)
	reconnecting := logs.Of("root connection dead; reconnecting")
	runKeeper(t, k)
	logs.Of("the TCP table doesn't show the root's connection; relying on dead-link notifications only").Wait(t, 1, "giving up on the TCP table")
	if n := fk.reconfigured(); n != unseenLimit {
		t.Errorf("%d reconfigures with a blind TCP table; want %d", n, unseenLimit)
	}
	// Notifications still work.
	fk.kill(true)
	reconnecting.Wait(t, 2, "reconnects")
	// Sent once the reconnect above has begun, so the two notifications
	// aren't merged: this one's reconnect starts when that one has ended.
	fk.dead <- 0
	reconnecting.Wait(t, 3, "reconnects (the one before never ended)")
	if !fk.connected() {
		t.Error("no reconnect after a notification")
	}
	noReconnect(t, got, "although the table could not confirm it")
}

// With neither notifications nor a TCP table that shows the connection,
// Run fails rather than watch nothing.
func TestKeeperCannotWatch(t *testing.T) {
	t.Parallel()
	k, _, _, _ := newKeeper(t)
	k.Watch = func() (LinkWatcher, error) { return nil, kernel.ErrNoDriver }
	k.Established = func(netip.AddrPort) ([]netip.AddrPort, error) { return nil, nil }
	if err := k.Run(t.Context()); !errors.Is(err, kernel.ErrNoDriver) {
		t.Errorf("Run = %v; want ErrNoDriver", err)
	}
}
