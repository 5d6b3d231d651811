package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

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
// call still succeeds) and notifies dead links.
type fakeKernel struct {
	mu     sync.Mutex
	local  netip.AddrPort // the device's socket; invalid when dead
	dead   chan int
	reconf int
	checks int
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
	f.reconf++
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
	f.checks++
	if !f.local.IsValid() {
		return nil, nil
	}
	return []netip.AddrPort{f.local}, nil
}

// started waits for the Keeper's first look at the TCP table.
func (f *fakeKernel) started(t *testing.T) {
	t.Helper()
	for range 500 {
		f.mu.Lock()
		n := f.checks
		f.mu.Unlock()
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the Keeper never looked at the TCP table")
}

func (f *fakeKernel) connected() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.local.IsValid()
}

// server is a stand-in appliance: dials fail while it is down.
type server struct {
	mu   sync.Mutex
	down bool
	addr string
	size int64
}

func (s *server) Dial(ctx context.Context, addr, export string) (*net.TCPConn, nbd.ExportDetails, error) {
	s.mu.Lock()
	down, size := s.down, s.size
	s.mu.Unlock()
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
	srv.set(true, 1<<20)
	fk.kill(true)
	time.Sleep(100 * time.Millisecond) // a few failed attempts
	if fk.connected() {
		t.Fatal("reconnected while the server was down")
	}
	if st := k.Status(); st.Connected {
		t.Errorf("Status while down = %+v; want Connected false", st)
	}
	srv.set(false, 1<<20)
	select {
	case r := <-got:
		if r.Attempts < 2 || r.LastErr != "connection refused" || r.Down < 100*time.Millisecond {
			t.Errorf("Reconnect = %+v; want several attempts, the server's error, at least 100ms down", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnect")
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
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnect")
	}
}

// A notification for a link that is alive (another device, or one already
// replaced) costs nothing; a socket the kernel doesn't need is not counted.
func TestKeeperIgnoresLiveLink(t *testing.T) {
	t.Parallel()
	k, fk, _, got := newKeeper(t)
	runKeeper(t, k)
	fk.dead <- 3 // another device
	fk.dead <- 0 // ours, but alive
	time.Sleep(100 * time.Millisecond)
	select {
	case r := <-got:
		t.Errorf("reconnect %+v of a live link", r)
	default:
	}
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if fk.reconf != 0 {
		t.Errorf("%d reconfigures of a live link; want 0", fk.reconf)
	}
}

// An export that changed size is never attached.
func TestKeeperRefusesOtherSize(t *testing.T) {
	t.Parallel()
	k, fk, srv, got := newKeeper(t)
	runKeeper(t, k)
	srv.set(false, 2<<20)
	fk.kill(true)
	time.Sleep(100 * time.Millisecond)
	fk.mu.Lock()
	n := fk.reconf
	fk.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d reconfigures with an export of another size", n)
	}
	srv.set(false, 1<<20)
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnect once the size is right")
	}
}

// A link that died before the Keeper subscribed (its notification lost)
// is reconnected at start.
func TestKeeperReconnectsDeadLinkAtStart(t *testing.T) {
	t.Parallel()
	k, fk, _, got := newKeeper(t)
	fk.kill(false)
	runKeeper(t, k)
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnect")
	}
}

// A TCP table that can't see the connection (another network namespace)
// is given up on after a few reconnects the kernel accepts without a
// trace, instead of reconnecting forever.
func TestKeeperBlindTCPTable(t *testing.T) {
	t.Parallel()
	k, fk, _, got := newKeeper(t)
	k.Established = func(netip.AddrPort) ([]netip.AddrPort, error) { return nil, nil }
	runKeeper(t, k)
	time.Sleep(300 * time.Millisecond)
	fk.mu.Lock()
	n := fk.reconf
	fk.mu.Unlock()
	if n != unseenLimit {
		t.Errorf("%d reconfigures with a blind TCP table; want %d", n, unseenLimit)
	}
	// Notifications still work.
	fk.kill(true)
	time.Sleep(300 * time.Millisecond)
	if !fk.connected() {
		t.Error("no reconnect after a notification")
	}
	select {
	case r := <-got:
		t.Errorf("reconnect %+v reported although the table could not confirm it", r)
	default:
	}
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
