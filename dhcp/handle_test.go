package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// clock is a settable time source for Server.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// memStore is an in-memory LeaseStore that records calls and can fail.
type memStore struct {
	mu      sync.Mutex
	leases  map[string]Lease
	ops     []string
	batches int // UpdateLeases calls
	fail    error
}

func (m *memStore) LoadLeases(context.Context) ([]Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Lease
	for _, l := range m.leases {
		out = append(out, l)
	}
	return out, nil
}

func (m *memStore) UpdateLeases(_ context.Context, changes []LeaseChange) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if m.leases == nil {
		m.leases = make(map[string]Lease)
	}
	for _, c := range changes {
		if c.Delete {
			delete(m.leases, c.Lease.MAC.String())
			m.ops = append(m.ops, "delete "+c.Lease.MAC.String())
			continue
		}
		m.leases[c.Lease.MAC.String()] = c.Lease
		m.ops = append(m.ops, "save "+c.Lease.MAC.String()+" "+c.Lease.IP.String())
	}
	m.batches++
	return nil
}

func (m *memStore) takeOps() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ops := m.ops
	m.ops = nil
	return ops
}

// bootTable is a Booter answering from a map keyed by MAC string, with a
// default for other clients.
type bootTable struct {
	mu    sync.Mutex
	boots map[string]Boot
	def   Boot
	err   error
	seen  []Client
}

func (b *bootTable) Boot(_ context.Context, c Client) (Boot, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen = append(b.seen, c)
	if b.err != nil {
		return Boot{}, b.err
	}
	if v, ok := b.boots[c.MAC.String()]; ok {
		return v, nil
	}
	return b.def, nil
}

// clients returns the clients the Booter was asked about, in order.
func (b *bootTable) clients() []Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.seen)
}

func (b *bootTable) set(mac net.HardwareAddr, v Boot) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.boots == nil {
		b.boots = make(map[string]Boot)
	}
	b.boots[mac.String()] = v
}

// cmpAddr lets cmp compare netip values.
var cmpAddr = cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{}, netip.Prefix{})

var (
	srvIP     = netip.MustParseAddr("10.0.0.1")
	otherSrv  = netip.MustParseAddr("10.0.0.2")
	testRange = [2]netip.Addr{netip.MustParseAddr("10.0.0.100"), netip.MustParseAddr("10.0.0.103")}
)

type testServer struct {
	*Server
	clock  *clock
	booter *bootTable
	store  *memStore
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newTestServer returns a started server for 10.0.0.0/24 with a pool of
// four addresses, after applying opts to it.
func newTestServer(t testing.TB, mode Mode, opts ...func(*Server)) *testServer {
	t.Helper()
	ts := &testServer{clock: newClock(), booter: &bootTable{}, store: &memStore{}}
	ts.Server = &Server{
		Mode:       mode,
		Interface:  "eth9",
		ServerIP:   srvIP,
		Subnet:     netip.MustParsePrefix("10.0.0.0/24"),
		RangeStart: testRange[0],
		RangeEnd:   testRange[1],
		Router:     netip.MustParseAddr("10.0.0.254"),
		DNS:        []netip.Addr{netip.MustParseAddr("10.0.0.53")},
		Booter:     ts.booter,
		Leases:     ts.store,
		Logger:     testLogger(t),
		Now:        ts.clock.Now,
	}
	for _, o := range opts {
		o(ts.Server)
	}
	if err := ts.start(t.Context()); err != nil {
		t.Fatalf("start: %v", err)
	}
	return ts
}

func macN(n int) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0, 0, byte(n >> 8), byte(n)} }

var clientPeer = netip.MustParseAddrPort("0.0.0.0:68")

// do sends req through the per-packet logic, as the server does.
func (ts *testServer) do(t testing.TB, req *dhcpv4.DHCPv4) *reply {
	t.Helper()
	return ts.handle(t.Context(), req.ToBytes(), clientPeer, portDHCP)
}

func discover(mac net.HardwareAddr, opts map[uint8][]byte) *dhcpv4.DHCPv4 {
	return request(dhcpv4.MessageTypeDiscover, mac, opts)
}

func selectOffer(mac net.HardwareAddr, server, ip netip.Addr) *dhcpv4.DHCPv4 {
	return request(dhcpv4.MessageTypeRequest, mac, map[uint8][]byte{54: server.AsSlice(), 50: ip.AsSlice()})
}

func renew(mac net.HardwareAddr, ip netip.Addr) *dhcpv4.DHCPv4 {
	r := request(dhcpv4.MessageTypeRequest, mac, nil)
	r.ClientIPAddr = ip.AsSlice()
	return r
}

// dora runs DISCOVER and REQUEST for mac and returns the ACK.
func (ts *testServer) dora(t testing.TB, mac net.HardwareAddr) *dhcpv4.DHCPv4 {
	t.Helper()
	offer := ts.do(t, discover(mac, nil))
	if offer == nil {
		t.Fatalf("no offer for %v", mac)
		return nil
	}
	ack := ts.do(t, selectOffer(mac, srvIP, ipv4Of(offer.pkt.YourIPAddr)))
	if ack == nil || ack.pkt.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("no ACK for %v: %v", mac, ack)
	}
	return ack.pkt
}

func mustType(t testing.TB, r *reply, want dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	t.Helper()
	if r == nil {
		t.Fatalf("no reply; want %v", want)
		return nil
	}
	if got := r.pkt.MessageType(); got != want {
		t.Fatalf("reply type %v (message %q); want %v", got, r.pkt.Message(), want)
	}
	return r.pkt
}

func TestFullDORA(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	mac := macN(1)
	r := ts.do(t, discover(mac, map[uint8][]byte{55: {1, 3, 6, 12, 15, 66, 67}}))
	offer := mustType(t, r, dhcpv4.MessageTypeOffer)
	ip := testRange[0]
	if got := ipv4Of(offer.YourIPAddr); got != ip {
		t.Fatalf("offered %v; want %v", got, ip)
	}
	// Not configured yet, no broadcast flag: unicast at layer 2.
	if r.dst != netip.AddrPortFrom(ip, 68) || !bytes.Equal(r.hw, mac) {
		t.Errorf("offer routed to %v at %v; want %v:68 at %v", r.dst, r.hw, ip, mac)
	}
	wantOpts := map[uint8][]byte{
		1:  {255, 255, 255, 0},
		3:  {10, 0, 0, 254},
		6:  {10, 0, 0, 53},
		7:  {10, 0, 0, 1},
		28: {10, 0, 0, 255},
		51: {0, 0, 0x0e, 0x10},
		53: {2},
		54: {10, 0, 0, 1},
		58: {0, 0, 0x07, 0x08},
		59: {0, 0, 0x0c, 0x4e},
	}
	if diff := cmp.Diff(wantOpts, map[uint8][]byte(offer.Options)); diff != "" {
		t.Errorf("offer options (-want +got):\n%s", diff)
	}
	if _, ok := ts.LeaseFor(mac); ok {
		t.Errorf("LeaseFor(%v) reports a lease after an offer", mac)
	}

	r = ts.do(t, selectOffer(mac, srvIP, ip))
	ack := mustType(t, r, dhcpv4.MessageTypeAck)
	if got := ipv4Of(ack.YourIPAddr); got != ip {
		t.Errorf("ACK yiaddr %v; want %v", got, ip)
	}
	l, ok := ts.LeaseFor(mac)
	if want := (Lease{MAC: mac, IP: ip, Expiry: ts.clock.Now().Add(DefaultLeaseTime)}); !ok || !cmp.Equal(l, want, cmpAddr) {
		t.Errorf("LeaseFor(%v) = %v, %v; want %v", mac, l, ok, want)
	}
	if got, ok := ts.MACFor(ip); !ok || !bytes.Equal(got, mac) {
		t.Errorf("MACFor(%v) = %v, %v; want %v", ip, got, ok, mac)
	}
	if got, want := ts.store.takeOps(), []string{"save " + mac.String() + " " + ip.String()}; !cmp.Equal(got, want) {
		t.Errorf("store ops %q; want %q", got, want)
	}
	ts.clock.Add(DefaultLeaseTime)
	if _, ok := ts.LeaseFor(mac); ok {
		t.Errorf("LeaseFor(%v) reports a lease after expiry", mac)
	}
	if _, ok := ts.MACFor(ip); ok {
		t.Errorf("MACFor(%v) reports a lease after expiry", ip)
	}
}

// T1 and T2 are half and seven eighths of the lease (RFC 2131 section
// 4.4.5), even for leases whose nanoseconds times 7 overflow.
func TestLeaseTimes(t *testing.T) {
	for _, lease := range []time.Duration{time.Hour, 50 * 365 * 24 * time.Hour} {
		ts := newTestServer(t, ModeFull, func(s *Server) { s.LeaseTime = lease })
		ack := ts.dora(t, macN(1))
		secs := uint32(lease / time.Second)
		for _, o := range []struct {
			code uint8
			want uint32
		}{{51, secs}, {58, secs / 2}, {59, secs - secs/8}} {
			v := ack.Options.Get(dhcpv4.GenericOptionCode(o.code))
			if len(v) != 4 || binary.BigEndian.Uint32(v) != o.want {
				t.Errorf("lease %v: option %d = % x; want %d", lease, o.code, v, o.want)
			}
		}
	}
}

func TestFullBootInfo(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	mac := macN(1)
	res := netip.MustParseAddr("10.0.0.50")
	ts.booter.set(mac, Boot{
		IP:             res,
		Hostname:       "board-1",
		BootFile:       "lpxelinux.0",
		NextServer:     netip.MustParseAddr("10.0.0.9"),
		PXELinuxConfig: "pxelinux.cfg/board-1",
		PathPrefix:     "/boards/",
	})
	ipxeOpts := map[uint8][]byte{60: []byte("PXEClient:Arch:00000:UNDI:002001"), 77: []byte("iPXE"), 55: {66, 67}}
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest} {
		req := request(mt, mac, ipxeOpts)
		if mt == dhcpv4.MessageTypeRequest {
			req.Options[54] = srvIP.AsSlice()
			req.Options[50] = res.AsSlice()
		}
		p := ts.do(t, req).pkt
		got := map[string]string{
			"yiaddr": p.YourIPAddr.String(),
			"siaddr": p.ServerIPAddr.String(),
			"file":   p.BootFileName,
			"12":     string(p.Options[12]),
			"66":     string(p.Options[66]),
			"67":     string(p.Options[67]),
			"209":    string(p.Options[209]),
			"210":    string(p.Options[210]),
			"175":    fmt.Sprint(p.Options[175]),
			"60":     string(p.Options[60]),
		}
		want := map[string]string{
			"yiaddr": "10.0.0.50",
			"siaddr": "10.0.0.9",
			"file":   "lpxelinux.0",
			"12":     "board-1",
			"66":     "10.0.0.9",
			"67":     "lpxelinux.0",
			"209":    "pxelinux.cfg/board-1",
			"210":    "/boards/",
			"175":    "[176 1 1]",
			"60":     "",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%v reply (-want +got):\n%s", mt, diff)
		}
	}
	// A plain client gets no iPXE option, and no option 66/67 unless it
	// asks.
	ts.booter.set(macN(2), Boot{BootFile: "boot.scr.uimg"})
	p := ts.do(t, discover(macN(2), map[uint8][]byte{60: []byte("U-Boot.armv8"), 93: {0, 0x16}})).pkt
	if p.BootFileName != "boot.scr.uimg" || ipv4Of(p.ServerIPAddr) != srvIP {
		t.Errorf("U-Boot offer file %q siaddr %v; want boot.scr.uimg from %v", p.BootFileName, p.ServerIPAddr, srvIP)
	}
	for _, o := range []uint8{66, 67, 175} {
		if v, ok := p.Options[o]; ok {
			t.Errorf("U-Boot offer has option %d = %q", o, v)
		}
	}
	if c := ts.booter.clients()[len(ts.booter.clients())-1]; c.Firmware != FirmwareUBoot {
		t.Errorf("U-Boot classified as %v", c.Firmware)
	}
}

func TestLongBootFile(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	url := "http://10.0.0.1:8080/ipxe/" + strings.Repeat("x", 150) + ".ipxe"
	ts.booter.def = Boot{BootFile: url}
	p := ts.do(t, discover(macN(1), nil)).pkt
	if p.BootFileName != "" || string(p.Options[67]) != url {
		t.Errorf("long boot file: file field %q, option 67 %q; want empty and the URL", p.BootFileName, p.Options[67])
	}
	if b, err := dhcpv4.FromBytes(p.ToBytes()); err != nil || b.BootFileNameOption() != url {
		t.Errorf("reply does not round-trip: %v", err)
	}
	ts.booter.def = Boot{BootFile: strings.Repeat("y", 256)}
	if r := ts.do(t, discover(macN(2), nil)); r != nil {
		t.Errorf("boot file over 255 bytes was sent")
	}
}

func TestRequestStates(t *testing.T) {
	res := netip.MustParseAddr("10.0.0.50")
	tests := []struct {
		name     string
		setup    func(t *testing.T, ts *testServer) // before the request
		req      func() *dhcpv4.DHCPv4
		wantType dhcpv4.MessageType // 0: no reply
		wantIP   netip.Addr
		wantDst  netip.AddrPort
		wantL2   bool // unicast at layer 2 to the client's MAC
	}{
		{
			name:     "selecting without an offer",
			req:      func() *dhcpv4.DHCPv4 { return selectOffer(macN(1), srvIP, testRange[0]) },
			wantType: dhcpv4.MessageTypeNak,
			wantDst:  broadcastClient,
		},
		{
			name:  "selecting another server",
			setup: func(t *testing.T, ts *testServer) { ts.do(t, discover(macN(1), nil)) },
			req:   func() *dhcpv4.DHCPv4 { return selectOffer(macN(1), otherSrv, testRange[0]) },
		},
		{
			name: "init-reboot, address free",
			req: func() *dhcpv4.DHCPv4 {
				return request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{50: {10, 0, 0, 102}})
			},
			wantType: dhcpv4.MessageTypeAck,
			wantIP:   netip.MustParseAddr("10.0.0.102"),
			wantDst:  netip.MustParseAddrPort("10.0.0.102:68"),
			wantL2:   true,
		},
		{
			name: "init-reboot, other network",
			req: func() *dhcpv4.DHCPv4 {
				return request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{50: {192, 168, 1, 5}})
			},
			wantType: dhcpv4.MessageTypeNak,
			wantDst:  broadcastClient,
		},
		{
			name: "init-reboot, outside the pool",
			req: func() *dhcpv4.DHCPv4 {
				return request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{50: {10, 0, 0, 7}})
			},
			wantType: dhcpv4.MessageTypeNak,
			wantDst:  broadcastClient,
		},
		{
			name:  "init-reboot, address leased to another client",
			setup: func(t *testing.T, ts *testServer) { ts.dora(t, macN(2)) },
			req: func() *dhcpv4.DHCPv4 {
				return request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{50: testRange[0].AsSlice()})
			},
			wantType: dhcpv4.MessageTypeNak,
			wantDst:  broadcastClient,
		},
		{
			name:  "init-reboot, reserved client asks for another address",
			setup: func(t *testing.T, ts *testServer) { ts.booter.set(macN(1), Boot{IP: res}) },
			req: func() *dhcpv4.DHCPv4 {
				return request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{50: testRange[0].AsSlice()})
			},
			wantType: dhcpv4.MessageTypeNak,
			wantDst:  broadcastClient,
		},
		{
			name:     "renewing: unicast to ciaddr",
			setup:    func(t *testing.T, ts *testServer) { ts.dora(t, macN(1)) },
			req:      func() *dhcpv4.DHCPv4 { return renew(macN(1), testRange[0]) },
			wantType: dhcpv4.MessageTypeAck,
			wantIP:   testRange[0],
			wantDst:  netip.AddrPortFrom(testRange[0], 68),
		},
		{
			name:     "renewing someone else's address",
			setup:    func(t *testing.T, ts *testServer) { ts.dora(t, macN(2)) },
			req:      func() *dhcpv4.DHCPv4 { return renew(macN(1), testRange[0]) },
			wantType: dhcpv4.MessageTypeNak,
			wantDst:  broadcastClient,
		},
		{
			name:  "rebinding with broadcast flag: still to ciaddr",
			setup: func(t *testing.T, ts *testServer) { ts.dora(t, macN(1)) },
			req: func() *dhcpv4.DHCPv4 {
				r := renew(macN(1), testRange[0])
				r.SetBroadcast()
				return r
			},
			wantType: dhcpv4.MessageTypeAck,
			wantIP:   testRange[0],
			wantDst:  netip.AddrPortFrom(testRange[0], 68),
		},
		{
			name:  "relayed NAK goes to the relay with the broadcast bit",
			setup: func(t *testing.T, ts *testServer) { ts.dora(t, macN(2)) },
			req: func() *dhcpv4.DHCPv4 {
				r := request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{50: testRange[0].AsSlice()})
				r.GatewayIPAddr = net.IP{10, 0, 0, 3}
				return r
			},
			wantType: dhcpv4.MessageTypeNak,
			wantDst:  netip.MustParseAddrPort("10.0.0.3:67"),
		},
		{
			name: "relayed from a subnet we don't serve",
			req: func() *dhcpv4.DHCPv4 {
				r := selectOffer(macN(1), srvIP, testRange[0])
				r.GatewayIPAddr = net.IP{172, 16, 0, 1}
				return r
			},
		},
		{
			name: "no address at all",
			req:  func() *dhcpv4.DHCPv4 { return request(dhcpv4.MessageTypeRequest, macN(1), nil) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, ModeFull)
			if tt.setup != nil {
				tt.setup(t, ts)
			}
			req := tt.req()
			r := ts.do(t, req)
			if tt.wantType == 0 {
				if r != nil {
					t.Fatalf("got %v; want no reply", r.pkt.MessageType())
				}
				return
			}
			p := mustType(t, r, tt.wantType)
			if got := ipv4Of(p.YourIPAddr); got != tt.wantIP {
				t.Errorf("yiaddr %v; want %v", got, tt.wantIP)
			}
			if r.dst != tt.wantDst || (r.hw != nil) != tt.wantL2 {
				t.Errorf("routed to %v (hw %v); want %v, layer 2 %v", r.dst, r.hw, tt.wantDst, tt.wantL2)
			}
			if tt.wantType == dhcpv4.MessageTypeNak {
				if ipv4Of(req.GatewayIPAddr).IsValid() && !p.IsBroadcast() {
					t.Errorf("relayed NAK without the broadcast bit")
				}
				for _, o := range []uint8{51, 1, 3, 6} {
					if _, ok := p.Options[o]; ok {
						t.Errorf("NAK carries option %d", o)
					}
				}
			}
			if tt.wantType == dhcpv4.MessageTypeAck && !p.ClientIPAddr.Equal(req.ClientIPAddr) {
				t.Errorf("ACK ciaddr %v; want the request's %v", p.ClientIPAddr, req.ClientIPAddr)
			}
		})
	}
}

func TestOtherServerChosenFreesOffer(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	p := mustType(t, ts.do(t, discover(macN(1), nil)), dhcpv4.MessageTypeOffer)
	if r := ts.do(t, selectOffer(macN(1), otherSrv, ipv4Of(p.YourIPAddr))); r != nil {
		t.Fatalf("answered a request for another server")
	}
	p2 := mustType(t, ts.do(t, discover(macN(2), nil)), dhcpv4.MessageTypeOffer)
	if !p2.YourIPAddr.Equal(p.YourIPAddr) {
		t.Errorf("second client offered %v; want the freed %v", p2.YourIPAddr, p.YourIPAddr)
	}
}

func TestReservationTakesOver(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	a, b := macN(1), macN(2)
	ip := ipv4Of(ts.dora(t, a).YourIPAddr)
	ts.store.takeOps()
	ts.booter.set(b, Boot{IP: ip})
	offer := mustType(t, ts.do(t, discover(b, nil)), dhcpv4.MessageTypeOffer)
	if got := ipv4Of(offer.YourIPAddr); got != ip {
		t.Fatalf("reserved client offered %v; want %v", got, ip)
	}
	mustType(t, ts.do(t, selectOffer(b, srvIP, ip)), dhcpv4.MessageTypeAck)
	want := []string{"delete " + a.String(), "save " + b.String() + " " + ip.String()}
	if got := ts.store.takeOps(); !cmp.Equal(got, want) {
		t.Errorf("store ops %q; want %q", got, want)
	}
	mustType(t, ts.do(t, renew(a, ip)), dhcpv4.MessageTypeNak)
	if got, _ := ts.MACFor(ip); !bytes.Equal(got, b) {
		t.Errorf("MACFor(%v) = %v; want %v", ip, got, b)
	}
	// The evicted client starts over and gets another address.
	if got := ipv4Of(ts.dora(t, a).YourIPAddr); got == ip {
		t.Errorf("evicted client got the reserved address again")
	}
}

func TestReleaseDecline(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	mac := macN(1)
	ip := ipv4Of(ts.dora(t, mac).YourIPAddr)
	ts.store.takeOps()

	rel := request(dhcpv4.MessageTypeRelease, mac, map[uint8][]byte{54: srvIP.AsSlice()})
	rel.ClientIPAddr = ip.AsSlice()
	if r := ts.do(t, rel); r != nil {
		t.Fatalf("RELEASE answered")
	}
	if _, ok := ts.LeaseFor(mac); ok {
		t.Errorf("lease still current after RELEASE")
	}
	if got, want := ts.store.takeOps(), []string{"delete " + mac.String()}; !cmp.Equal(got, want) {
		t.Errorf("store ops %q; want %q", got, want)
	}
	// Same address when it comes back.
	if got := ipv4Of(ts.dora(t, mac).YourIPAddr); got != ip {
		t.Errorf("returning client got %v; want %v", got, ip)
	}

	// DECLINE: the address is withheld, from this client too.
	dec := request(dhcpv4.MessageTypeDecline, mac, map[uint8][]byte{54: srvIP.AsSlice(), 50: ip.AsSlice()})
	if r := ts.do(t, dec); r != nil {
		t.Fatalf("DECLINE answered")
	}
	if _, ok := ts.LeaseFor(mac); ok {
		t.Errorf("lease still current after DECLINE")
	}
	for i := range 3 {
		m := macN(10 + i)
		if got := ipv4Of(ts.dora(t, m).YourIPAddr); got == ip {
			t.Errorf("declined address %v given to %v", ip, m)
		}
	}
	if r := ts.do(t, discover(macN(20), nil)); r != nil {
		t.Errorf("offered %v with the only free address declined", r.pkt.YourIPAddr)
	}
	ts.clock.Add(DefaultDeclineTimeout)
	if got := ipv4Of(ts.dora(t, macN(20)).YourIPAddr); got != ip {
		t.Errorf("after the decline hold got %v; want %v", got, ip)
	}
}

func TestPoolReuse(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	var got []netip.Addr
	for i := range 4 {
		got = append(got, ipv4Of(ts.dora(t, macN(i)).YourIPAddr))
	}
	want := []netip.Addr{testRange[0], testRange[0].Next(), testRange[0].Next().Next(), testRange[1]}
	if !cmp.Equal(got, want, cmpAddr) {
		t.Errorf("pool handed out %v; want %v", got, want)
	}
	if r := ts.do(t, discover(macN(9), nil)); r != nil {
		t.Fatalf("offer from an exhausted pool: %v", r.pkt.YourIPAddr)
	}
	// Leases 2 and 0 run out (2 first); the longest expired is reused.
	ts.clock.Add(DefaultLeaseTime / 2)
	mustType(t, ts.do(t, renew(macN(1), want[1])), dhcpv4.MessageTypeAck)
	mustType(t, ts.do(t, renew(macN(3), want[3])), dhcpv4.MessageTypeAck)
	ts.clock.Add(DefaultLeaseTime/2 + time.Second)
	if got := ipv4Of(ts.dora(t, macN(9)).YourIPAddr); got != want[0] && got != want[2] {
		t.Errorf("new client got %v; want an expired address", got)
	}
	// A returning client whose lease expired but whose address is free
	// gets it back.
	if got := ipv4Of(ts.dora(t, macN(0)).YourIPAddr); got != want[0] && got != want[2] {
		t.Errorf("returning client got %v", got)
	}
}

func TestOfferTimeout(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	ts.RangeEnd = testRange[0]
	ts.cfg.end = u32(testRange[0])
	mustType(t, ts.do(t, discover(macN(1), nil)), dhcpv4.MessageTypeOffer)
	if r := ts.do(t, discover(macN(2), nil)); r != nil {
		t.Fatalf("offered %v, which is held for another client", r.pkt.YourIPAddr)
	}
	ts.clock.Add(DefaultOfferTimeout)
	mustType(t, ts.do(t, discover(macN(2), nil)), dhcpv4.MessageTypeOffer)
	mustType(t, ts.do(t, selectOffer(macN(1), srvIP, testRange[0])), dhcpv4.MessageTypeNak)
}

func TestRequestedAddress(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	want := testRange[1]
	p := mustType(t, ts.do(t, discover(macN(1), map[uint8][]byte{50: want.AsSlice()})), dhcpv4.MessageTypeOffer)
	if got := ipv4Of(p.YourIPAddr); got != want {
		t.Errorf("offered %v; want the requested %v", got, want)
	}
	p = mustType(t, ts.do(t, discover(macN(2), map[uint8][]byte{50: {10, 0, 0, 1}})), dhcpv4.MessageTypeOffer)
	if got := ipv4Of(p.YourIPAddr); got == srvIP {
		t.Errorf("offered the server's own address")
	}
}

func TestInform(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	ts.booter.def = Boot{BootFile: "x.efi"}
	req := request(dhcpv4.MessageTypeInform, macN(1), nil)
	req.ClientIPAddr = net.IP{10, 0, 0, 77}
	r := ts.do(t, req)
	p := mustType(t, r, dhcpv4.MessageTypeAck)
	if !ipv4Of(p.YourIPAddr).IsUnspecified() && ipv4Of(p.YourIPAddr).IsValid() {
		t.Errorf("INFORM ACK yiaddr %v; want 0", p.YourIPAddr)
	}
	for _, o := range []uint8{51, 58, 59} {
		if _, ok := p.Options[o]; ok {
			t.Errorf("INFORM ACK carries lease option %d", o)
		}
	}
	if p.BootFileName != "x.efi" || p.Options[1] == nil {
		t.Errorf("INFORM ACK lacks configuration: file %q mask %v", p.BootFileName, p.Options[1])
	}
	if want := netip.MustParseAddrPort("10.0.0.77:68"); r.dst != want || r.hw != nil {
		t.Errorf("INFORM ACK routed to %v; want %v", r.dst, want)
	}
	// From another network: our mask and router would be wrong for it.
	req.ClientIPAddr = net.IP{192, 168, 9, 9}
	if r := ts.do(t, req); r != nil {
		t.Errorf("INFORM from another network answered: %v", r.pkt)
	}
}

func TestBooterDecisions(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	ts.booter.set(macN(1), Boot{Ignore: true})
	if r := ts.do(t, discover(macN(1), nil)); r != nil {
		t.Errorf("ignored client got %v", r.pkt.MessageType())
	}
	ts.booter.set(macN(2), Boot{IP: netip.MustParseAddr("192.168.7.7")})
	if r := ts.do(t, discover(macN(2), nil)); r != nil {
		t.Errorf("client with a reservation outside the subnet got %v", r.pkt.YourIPAddr)
	}
	ts.booter.err = errors.New("database is locked")
	if r := ts.do(t, discover(macN(3), nil)); r != nil {
		t.Errorf("reply despite a Booter error")
	}
}

// Two REQUESTs of one client whose saves fail in one batch undo in
// either order, and leave the lease the store holds.
func TestUndoStackedFailures(t *testing.T) {
	for _, order := range []string{"first failure first", "second failure first"} {
		t.Run(order, func(t *testing.T) {
			ts := newTestServer(t, ModeFull)
			mac := macN(1)
			saved := ipv4Of(ts.dora(t, mac).YourIPAddr)
			key := string(mac)
			expiry := ts.clock.Now().Add(time.Hour)
			ts.mu.Lock()
			nb1 := &binding{mac: key, ip: testRange[0].Next(), expiry: expiry, state: stateBound, prev: ts.table.byMAC[key]}
			ts.table.put(nb1)
			nb2 := &binding{mac: key, ip: testRange[0].Next().Next(), expiry: expiry, state: stateBound, prev: nb1}
			ts.table.put(nb2)
			ts.mu.Unlock()
			if order == "first failure first" {
				ts.undo(nb1, nil)
				ts.undo(nb2, nil)
			} else {
				ts.undo(nb2, nil)
				ts.undo(nb1, nil)
			}
			if l, ok := ts.LeaseFor(mac); !ok || l.IP != saved {
				t.Errorf("LeaseFor = %v, %v; want the saved lease of %v", l, ok, saved)
			}
			for _, b := range []*binding{nb1, nb2} {
				if got, ok := ts.MACFor(b.ip); ok {
					t.Errorf("MACFor(%v) = %v for a lease never saved", b.ip, got)
				}
			}
		})
	}
}

func TestLeasePersistence(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	mac := macN(1)
	ip := ipv4Of(ts.dora(t, mac).YourIPAddr)

	ts.store.fail = errors.New("disk full")
	if r := ts.do(t, renew(mac, ip)); r != nil {
		t.Errorf("ACK sent although the lease could not be saved")
	}
	// Nothing was acknowledged, so the table says what the store holds:
	// the old lease, and no new one for a newcomer.
	if l, ok := ts.LeaseFor(mac); !ok || l.IP != ip {
		t.Errorf("after a failed renewal LeaseFor(%v) = %v, %v; want the old lease", mac, l, ok)
	}
	other := macN(2)
	offer := mustType(t, ts.do(t, discover(other, nil)), dhcpv4.MessageTypeOffer)
	if r := ts.do(t, selectOffer(other, srvIP, ipv4Of(offer.YourIPAddr))); r != nil {
		t.Errorf("ACK sent although the lease could not be saved")
	}
	if got, ok := ts.MACFor(ipv4Of(offer.YourIPAddr)); ok {
		t.Errorf("MACFor(%v) = %v after a lease that was never acknowledged", offer.YourIPAddr, got)
	}
	ts.store.fail = nil

	// A new server on the same store knows the lease.
	ts2 := newTestServer(t, ModeFull)
	ts2.Server.Leases = ts.store
	ts2.started = false
	ts2.clock = ts.clock
	ts2.Now = ts.clock.Now
	if err := ts2.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if l, ok := ts2.LeaseFor(mac); !ok || l.IP != ip {
		t.Fatalf("after restart LeaseFor(%v) = %v, %v; want %v", mac, l, ok, ip)
	}
	mustType(t, ts2.do(t, renew(mac, ip)), dhcpv4.MessageTypeAck)
	if p := mustType(t, ts2.do(t, discover(macN(2), nil)), dhcpv4.MessageTypeOffer); ipv4Of(p.YourIPAddr) == ip {
		t.Errorf("after restart, leased %v offered to another client", ip)
	}
}

func TestProxy(t *testing.T) {
	uuid := append([]byte{0}, bytes.Repeat([]byte{7}, 16)...)
	bios := map[uint8][]byte{60: []byte("PXEClient:Arch:00000:UNDI:002001"), 93: {0, 0}, 97: uuid}
	efi := map[uint8][]byte{60: []byte("PXEClient:Arch:00007:UNDI:003016"), 93: {0, 7}, 97: uuid}
	ipxe := map[uint8][]byte{60: []byte("PXEClient:Arch:00000:UNDI:002001"), 93: {0, 0}, 77: []byte("iPXE")}
	boot := Boot{BootFile: "undionly.kpxe", Hostname: "ignored-in-proxy", IP: netip.MustParseAddr("10.0.0.50")}
	tests := []struct {
		name    string
		req     *dhcpv4.DHCPv4
		boot    Boot
		want43  []byte
		wantNil bool
	}{
		{name: "BIOS PXE", req: discover(macN(1), bios), boot: boot, want43: []byte{6, 1, 8, 255}},
		{name: "iPXE", req: discover(macN(1), ipxe), boot: boot, want43: []byte{6, 1, 8, 255}},
		{name: "UEFI: no option 43, asks port 4011", req: discover(macN(1), efi), boot: boot},
		{name: "not a PXE client", req: discover(macN(1), map[uint8][]byte{60: []byte("U-Boot.armv8")}), boot: boot, wantNil: true},
		{name: "no boot file", req: discover(macN(1), bios), wantNil: true},
		{name: "ignored", req: discover(macN(1), bios), boot: Boot{Ignore: true, BootFile: "x"}, wantNil: true},
		{name: "REQUEST to the site's server", req: selectOffer(macN(1), otherSrv, netip.MustParseAddr("10.0.0.9")), boot: boot, wantNil: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, ModeProxy)
			ts.booter.def = tt.boot
			r := ts.do(t, tt.req)
			if tt.wantNil {
				if r != nil {
					t.Fatalf("got %v; want no reply", r.pkt.MessageType())
				}
				return
			}
			p := mustType(t, r, dhcpv4.MessageTypeOffer)
			got := map[string]string{
				"yiaddr": p.YourIPAddr.String(),
				"siaddr": p.ServerIPAddr.String(),
				"sname":  p.ServerHostName,
				"file":   p.BootFileName,
				"54":     net.IP(p.Options[54]).String(),
				"60":     string(p.Options[60]),
				"97":     fmt.Sprint(p.Options[97]),
				"43":     fmt.Sprint(p.Options[43]),
			}
			want := map[string]string{
				"yiaddr": "0.0.0.0",
				"siaddr": "10.0.0.1",
				"sname":  "10.0.0.1",
				"file":   "undionly.kpxe",
				"54":     "10.0.0.1",
				"60":     "PXEClient",
				"97":     fmt.Sprint(tt.req.Options[97]),
				"43":     fmt.Sprint(tt.want43),
			}
			if tt.want43 == nil {
				want["43"] = "[]"
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("proxy offer (-want +got):\n%s", diff)
			}
			for _, o := range []uint8{1, 3, 6, 12, 51, 175} {
				if _, ok := p.Options[o]; ok {
					t.Errorf("proxy offer carries option %d", o)
				}
			}
			if r.dst != broadcastClient || r.hw != nil {
				t.Errorf("proxy offer routed to %v (hw %v); want broadcast", r.dst, r.hw)
			}
		})
	}
}

func TestServePXEPort(t *testing.T) {
	ts := newTestServer(t, ModeProxy)
	ts.booter.def = Boot{BootFile: "ipxe.efi", NextServer: netip.MustParseAddr("10.0.0.8")}
	req := request(dhcpv4.MessageTypeRequest, macN(1), map[uint8][]byte{
		60: []byte("PXEClient:Arch:00007:UNDI:003016"), 93: {0, 7},
		43: {71, 4, 0, 0, 0, 0, 255},
		54: srvIP.AsSlice(),
	})
	req.ClientIPAddr = net.IP{10, 0, 0, 77}
	peer := netip.MustParseAddrPort("10.0.0.77:68")
	r := ts.handle(t.Context(), req.ToBytes(), peer, portPXE)
	p := mustType(t, r, dhcpv4.MessageTypeAck)
	if r.dst != peer || r.hw != nil {
		t.Errorf("boot server ACK routed to %v; want back to %v", r.dst, peer)
	}
	if p.BootFileName != "ipxe.efi" || ipv4Of(p.ServerIPAddr).String() != "10.0.0.8" || string(p.Options[60]) != "PXEClient" {
		t.Errorf("boot server ACK file %q siaddr %v class %q", p.BootFileName, p.ServerIPAddr, p.Options[60])
	}
	if want := []byte{71, 4, 0, 0, 0, 0, 255}; !bytes.Equal(p.Options[43], want) {
		t.Errorf("option 43 = %v; want the boot item echoed, %v", p.Options[43], want)
	}
	if !p.ClientIPAddr.Equal(req.ClientIPAddr) {
		t.Errorf("ciaddr %v; want %v", p.ClientIPAddr, req.ClientIPAddr)
	}
	// DISCOVERs don't belong on this port.
	if r := ts.handle(t.Context(), discover(macN(1), map[uint8][]byte{60: []byte("PXEClient")}).ToBytes(), peer, portPXE); r != nil {
		t.Errorf("DISCOVER answered on the PXE port")
	}
}

func TestInvalidRequests(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	tests := map[string]func(p *dhcpv4.DHCPv4){
		"reply opcode":        func(p *dhcpv4.DHCPv4) { p.OpCode = dhcpv4.OpcodeBootReply },
		"BOOTP":               func(p *dhcpv4.DHCPv4) { delete(p.Options, 53) },
		"zero MAC":            func(p *dhcpv4.DHCPv4) { p.ClientHWAddr = make(net.HardwareAddr, 6) },
		"short Ethernet MAC":  func(p *dhcpv4.DHCPv4) { p.ClientHWAddr = p.ClientHWAddr[:4] },
		"too many relay hops": func(p *dhcpv4.DHCPv4) { p.HopCount = 17 },
		"OFFER from a client": func(p *dhcpv4.DHCPv4) { p.Options[53] = []byte{2} },
	}
	for name, mod := range tests {
		t.Run(name, func(t *testing.T) {
			p := discover(macN(1), nil)
			mod(p)
			if r := ts.do(t, p); r != nil {
				t.Errorf("answered with %v", r.pkt.MessageType())
			}
		})
	}
	for _, b := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte{0xff}, 300)} {
		if r := ts.handle(t.Context(), b, clientPeer, portDHCP); r != nil {
			t.Errorf("handle(%q) answered", b)
		}
	}
}

func TestRoute(t *testing.T) {
	mac := macN(1)
	yi := net.IP{10, 0, 0, 100}
	l2 := netip.MustParseAddrPort("10.0.0.100:68")
	tests := []struct {
		name        string
		giaddr      net.IP
		ciaddr      net.IP
		broadcast   bool
		hwType      bool // false: not Ethernet
		mt          dhcpv4.MessageType
		yiaddr      net.IP
		wantDst     netip.AddrPort
		wantL2      bool
		wantBcastFl bool
	}{
		{name: "relay", giaddr: net.IP{10, 1, 0, 1}, mt: dhcpv4.MessageTypeOffer, yiaddr: yi, hwType: true, wantDst: netip.MustParseAddrPort("10.1.0.1:67")},
		{name: "relay wins over ciaddr", giaddr: net.IP{10, 1, 0, 1}, ciaddr: net.IP{10, 0, 0, 100}, mt: dhcpv4.MessageTypeAck, yiaddr: yi, hwType: true, wantDst: netip.MustParseAddrPort("10.1.0.1:67")},
		{name: "relayed NAK", giaddr: net.IP{10, 1, 0, 1}, mt: dhcpv4.MessageTypeNak, hwType: true, wantDst: netip.MustParseAddrPort("10.1.0.1:67"), wantBcastFl: true},
		{name: "NAK broadcast even with ciaddr", ciaddr: net.IP{10, 0, 0, 100}, mt: dhcpv4.MessageTypeNak, hwType: true, wantDst: broadcastClient},
		{name: "unicast renew", ciaddr: net.IP{10, 0, 0, 100}, mt: dhcpv4.MessageTypeAck, yiaddr: yi, hwType: true, wantDst: l2},
		{name: "broadcast flag", broadcast: true, mt: dhcpv4.MessageTypeOffer, yiaddr: yi, hwType: true, wantDst: broadcastClient, wantBcastFl: true},
		{name: "layer 2 unicast", mt: dhcpv4.MessageTypeOffer, yiaddr: yi, hwType: true, wantDst: l2, wantL2: true},
		{name: "no yiaddr (proxy offer)", mt: dhcpv4.MessageTypeOffer, hwType: true, wantDst: broadcastClient},
		{name: "not Ethernet", mt: dhcpv4.MessageTypeOffer, yiaddr: yi, wantDst: broadcastClient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request(dhcpv4.MessageTypeRequest, mac, nil)
			if tt.giaddr != nil {
				req.GatewayIPAddr = tt.giaddr
			}
			if tt.ciaddr != nil {
				req.ClientIPAddr = tt.ciaddr
			}
			if tt.broadcast {
				req.SetBroadcast()
			}
			if !tt.hwType {
				req.HWType = 6 // IEEE 802
			}
			resp := (&Server{}).newReply(req, tt.mt)
			if tt.yiaddr != nil {
				resp.YourIPAddr = tt.yiaddr
			}
			dst, hw := route(req, resp)
			if dst != tt.wantDst || (hw != nil) != tt.wantL2 {
				t.Errorf("route = %v, %v; want %v, layer 2 %v", dst, hw, tt.wantDst, tt.wantL2)
			}
			if tt.wantL2 && !bytes.Equal(hw, mac) {
				t.Errorf("route hw = %v; want %v", hw, mac)
			}
			if resp.IsBroadcast() != tt.wantBcastFl {
				t.Errorf("reply broadcast flag %v; want %v", resp.IsBroadcast(), tt.wantBcastFl)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	b := BooterFunc(func(context.Context, Client) (Boot, error) { return Boot{}, nil })
	full := func(mod func(s *Server)) *Server {
		s := &Server{
			Mode: ModeFull, Booter: b, ServerIP: srvIP,
			Subnet:     netip.MustParsePrefix("10.0.0.0/24"),
			RangeStart: testRange[0], RangeEnd: testRange[1],
		}
		mod(s)
		return s
	}
	tests := []struct {
		name    string
		s       *Server
		wantErr string
	}{
		{"proxy zero value with booter and IP", &Server{Booter: b, ServerIP: srvIP}, ""},
		{"no booter", &Server{ServerIP: srvIP}, "Booter is nil"},
		{"proxy without IP", &Server{Booter: b}, "ServerIP must be set"},
		{"full ok", full(func(*Server) {}), ""},
		{"IPv6 server", full(func(s *Server) { s.ServerIP = netip.MustParseAddr("fe80::1") }), "ServerIP must be set"},
		{"no subnet", full(func(s *Server) { s.Subnet = netip.Prefix{} }), "needs an IPv4 Subnet"},
		{"/31", full(func(s *Server) { s.Subnet = netip.MustParsePrefix("10.0.0.0/31") }), "needs an IPv4 Subnet"},
		{"server outside", full(func(s *Server) { s.ServerIP = netip.MustParseAddr("10.0.1.1") }), "outside Subnet"},
		{"range outside", full(func(s *Server) { s.RangeEnd = netip.MustParseAddr("10.0.1.1") }), "not inside Subnet"},
		{"range reversed", full(func(s *Server) { s.RangeStart, s.RangeEnd = s.RangeEnd, s.RangeStart }), "after RangeEnd"},
		{"range too big", full(func(s *Server) {
			s.Subnet = netip.MustParsePrefix("10.0.0.0/8")
			s.RangeStart, s.RangeEnd = netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.2.0.0")
		}), "more than"},
		{"IPv6 DNS", full(func(s *Server) { s.DNS = []netip.Addr{netip.MustParseAddr("::1")} }), "not IPv4"},
		{"bad mode", full(func(s *Server) { s.Mode = 7 }), "unknown mode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.s.check()
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("check() = %v; want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestModeText(t *testing.T) {
	for _, m := range []Mode{ModeProxy, ModeFull} {
		b, _ := m.MarshalText()
		var got Mode
		if err := got.UnmarshalText(b); err != nil || got != m {
			t.Errorf("round trip of %v: %v, %v", m, got, err)
		}
	}
	var m Mode
	if err := m.UnmarshalText([]byte("off")); err == nil {
		t.Errorf(`UnmarshalText("off") succeeded`)
	}
}

func TestActiveLeases(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	for i := range 3 {
		ts.dora(t, macN(i))
	}
	ts.do(t, discover(macN(9), nil)) // an offer is not a lease
	got := ts.ActiveLeases()
	var macs []string
	for _, l := range got {
		macs = append(macs, l.MAC.String())
	}
	slices.Sort(macs)
	if want := []string{macN(0).String(), macN(1).String(), macN(2).String()}; !cmp.Equal(macs, want) {
		t.Errorf("ActiveLeases MACs %v; want %v", macs, want)
	}
}

// TestRealPackets replays the DHCPDISCOVER and DHCPREQUEST that Debian's
// iPXE ROM (ipxe-qemu 1.0.0+git-20190125.36a4c85) sent in TestIPXETiming
// (regenerate: RACKBOOT_UPDATE_TESTDATA=1 go test -tags vmtest -run
// TestIPXETiming/both ./dhcp/) against a server configured as in that run.
func TestRealPackets(t *testing.T) {
	disc, err := os.ReadFile("testdata/ipxe-discover.bin")
	if err != nil {
		t.Fatal(err)
	}
	req, err := os.ReadFile("testdata/ipxe-request.bin")
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, ModeFull)
	ts.ServerIP = netip.MustParseAddr("10.77.0.1")
	ts.Subnet = netip.MustParsePrefix("10.77.0.0/24")
	ts.RangeStart, ts.RangeEnd = netip.MustParseAddr("10.77.0.100"), netip.MustParseAddr("10.77.0.199")
	ts.Router, ts.DNS = netip.Addr{}, nil
	ts.started = false
	if err := ts.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	ts.booter.def = Boot{BootFile: "pxelinux.0"}

	offer := mustType(t, ts.handle(t.Context(), disc, clientPeer, portDHCP), dhcpv4.MessageTypeOffer)
	c := ts.booter.clients()[0]
	want := Client{
		MAC:         net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56},
		Firmware:    FirmwareIPXE,
		Arch:        0,
		VendorClass: "PXEClient:Arch:00000:UNDI:002001",
		UserClass:   []string{"iPXE"},
		UUID:        make([]byte, 16),
		Interface:   "eth9",
	}
	if diff := cmp.Diff(want, c, cmpAddr); diff != "" {
		t.Errorf("iPXE classified (-want +got):\n%s", diff)
	}
	if got := fmt.Sprint(offer.Options[175]); got != "[176 1 1]" {
		t.Errorf("offer to iPXE: option 175 = %s; want [176 1 1]", got)
	}
	// iPXE asks for option 67 (and 66), so it gets both forms.
	if offer.BootFileName != "pxelinux.0" || string(offer.Options[67]) != "pxelinux.0" || string(offer.Options[66]) != "10.77.0.1" {
		t.Errorf("offer file %q, option 67 %q, option 66 %q", offer.BootFileName, offer.Options[67], offer.Options[66])
	}
	ack := mustType(t, ts.handle(t.Context(), req, clientPeer, portDHCP), dhcpv4.MessageTypeAck)
	if got := ipv4Of(ack.YourIPAddr).String(); got != "10.77.0.100" {
		t.Errorf("ACK for %s; want 10.77.0.100", got)
	}
}

// TestRealUBootPackets replays the DHCPDISCOVERs of Debian's U-Boot
// 2023.01 (u-boot-qemu) for arm64 and armhf, captured by TestUBootDHCP.
func TestRealUBootPackets(t *testing.T) {
	for _, tc := range []struct {
		file, vendorClass string
		arch              uint16
	}{
		{"testdata/uboot-arm64-discover.bin", "U-Boot.armv8", ArchUBootARM64},
		{"testdata/uboot-arm-discover.bin", "U-Boot.armv7", ArchUBootARM32},
	} {
		b, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		ts := newTestServer(t, ModeFull)
		ts.booter.def = Boot{BootFile: "boot.scr.uimg"}
		offer := mustType(t, ts.handle(t.Context(), b, clientPeer, portDHCP), dhcpv4.MessageTypeOffer)
		c := ts.booter.clients()[0]
		if c.Firmware != FirmwareUBoot || c.VendorClass != tc.vendorClass || c.Arch != tc.arch {
			t.Errorf("%s: classified %v, %q, arch %#x; want u-boot, %q, %#x", tc.file, c.Firmware, c.VendorClass, c.Arch, tc.vendorClass, tc.arch)
		}
		if offer.BootFileName != "boot.scr.uimg" || ipv4Of(offer.ServerIPAddr) != srvIP {
			t.Errorf("%s: offer file %q from %v", tc.file, offer.BootFileName, offer.ServerIPAddr)
		}
	}
}

// gateStore is a memStore whose writes each wait for the test's go-ahead.
type gateStore struct {
	memStore
	entered chan []LeaseChange // a write started, with these changes
	gate    chan error         // ends one write: nil applies it, else fails it
}

func (g *gateStore) UpdateLeases(ctx context.Context, changes []LeaseChange) error {
	g.entered <- slices.Clone(changes)
	if err := <-g.gate; err != nil {
		return err
	}
	if err := ctx.Err(); err != nil { // as SQLite's interrupt does
		return err
	}
	return g.memStore.UpdateLeases(ctx, changes)
}

// TestLeaseJournalOutlivesWriter: the handler that writes a batch may give
// up (its packet's deadline) while the write is under way; the batch
// carries the others' changes too and is still written.
func TestLeaseJournalOutlivesWriter(t *testing.T) {
	g := &gateStore{entered: make(chan []LeaseChange), gate: make(chan error)}
	var j leaseJournal
	ctx, cancel := context.WithCancel(t.Context())
	b := j.add(LeaseChange{Lease: Lease{MAC: macN(1), IP: netip.MustParseAddr("10.0.0.101")}})
	writer := make(chan error, 1)
	go func() { writer <- j.wait(ctx, g, b) }()
	<-g.entered
	other := make(chan error, 1)
	go func() { other <- j.wait(t.Context(), g, b) }()
	cancel()
	g.gate <- nil
	if err := <-writer; err != nil {
		t.Errorf("writer: %v, want the batch written", err)
	}
	if err := <-other; err != nil {
		t.Errorf("other waiter: %v, want the batch written", err)
	}
	if _, ok := g.leases[macN(1).String()]; !ok {
		t.Error("the lease is not in the store")
	}
}

// TestLeaseJournalGroupCommit: changes queued while a write is under way
// go to the store together in the next write, in queue order, and every
// waiter learns its own batch's outcome.
func TestLeaseJournalGroupCommit(t *testing.T) {
	g := &gateStore{entered: make(chan []LeaseChange), gate: make(chan error)}
	var j leaseJournal
	save := func(n byte) LeaseChange {
		return LeaseChange{Lease: Lease{MAC: macN(int(n)), IP: netip.AddrFrom4([4]byte{10, 0, 0, 100 + n})}}
	}
	wait := func(b *leaseBatch) <-chan error {
		ch := make(chan error, 1)
		go func() { ch <- j.wait(t.Context(), g, b) }()
		return ch
	}

	first := wait(j.add(save(1)))
	if got := <-g.entered; len(got) != 1 {
		t.Fatalf("first write carries %d changes, want 1", len(got))
	}
	// While it is under way, three handshakes queue their changes, one
	// with a deletion before its save.
	b2 := j.add(save(2))
	b3 := j.add(LeaseChange{Lease: Lease{MAC: macN(9)}, Delete: true}, save(3))
	b4 := j.add(save(4))
	if b2 != b3 || b3 != b4 {
		t.Fatal("changes queued during a write went to different batches")
	}
	waits := []<-chan error{wait(b2), wait(b3), wait(b4)}
	g.gate <- nil
	if err := <-first; err != nil {
		t.Fatalf("first write: %v", err)
	}
	got := <-g.entered
	want := []LeaseChange{save(2), {Lease: Lease{MAC: macN(9)}, Delete: true}, save(3), save(4)}
	if !cmp.Equal(got, want, cmpAddr) {
		t.Fatalf("second write carries %v, want %v", got, want)
	}
	g.gate <- errors.New("disk full")
	for i, w := range waits {
		if err := <-w; err == nil || err.Error() != "disk full" {
			t.Errorf("waiter %d: %v, want the batch's error", i+2, err)
		}
	}
	if g.batches != 1 {
		t.Errorf("store applied %d batches, want 1 (the failed one applies nothing)", g.batches)
	}

	// The journal goes on after a failure.
	next := wait(j.add(save(5)))
	<-g.entered
	g.gate <- nil
	if err := <-next; err != nil {
		t.Fatalf("write after a failure: %v", err)
	}
	if _, ok := g.leases[macN(5).String()]; !ok {
		t.Error("lease written after a failure is not in the store")
	}
}

// TestConflictCheck: a pool address another host answers for is not
// offered but withheld, the next one is; the client's own answer, a
// running lease and a reservation don't count; a failed check offers
// unchecked.
func TestConflictCheck(t *testing.T) {
	ts := newTestServer(t, ModeFull)
	squatter := net.HardwareAddr{0x02, 0xee, 0, 0, 0, 1}
	var mu sync.Mutex
	var checked []string
	inUse := map[netip.Addr]net.HardwareAddr{testRange[0]: squatter}
	var fail error
	ts.conflict = func(_ context.Context, ip netip.Addr) (net.HardwareAddr, error) {
		mu.Lock()
		defer mu.Unlock()
		checked = append(checked, ip.String())
		return inUse[ip], fail
	}
	took := func() []string {
		mu.Lock()
		defer mu.Unlock()
		c := checked
		checked = nil
		return c
	}

	offer := mustType(t, ts.do(t, discover(macN(1), nil)), dhcpv4.MessageTypeOffer)
	if got := ipv4Of(offer.YourIPAddr); got != testRange[0].Next() {
		t.Errorf("offered %v; want %v, the first address nobody answers for", got, testRange[0].Next())
	}
	if got, want := took(), []string{"10.0.0.100", "10.0.0.101"}; !slices.Equal(got, want) {
		t.Errorf("checked %v; want %v", got, want)
	}
	// The squatted address stays out of the pool, even when asked for.
	offer = mustType(t, ts.do(t, discover(macN(2), map[uint8][]byte{50: testRange[0].AsSlice()})), dhcpv4.MessageTypeOffer)
	if got := ipv4Of(offer.YourIPAddr); got == testRange[0] {
		t.Errorf("offered the withheld address %v", got)
	}
	took()

	// A client whose lease runs is offered its address unchecked.
	ack := ts.dora(t, macN(3))
	took()
	mustType(t, ts.do(t, discover(macN(3), nil)), dhcpv4.MessageTypeOffer)
	if got := took(); len(got) != 0 {
		t.Errorf("checked %v for a client with a running lease", got)
	}
	// The client answering for its own address is no conflict.
	ip3 := ipv4Of(ack.YourIPAddr)
	ts.clock.Add(2 * time.Hour) // the lease runs out
	inUse[ip3] = macN(3)
	if got := ipv4Of(mustType(t, ts.do(t, discover(macN(3), nil)), dhcpv4.MessageTypeOffer).YourIPAddr); got != ip3 {
		t.Errorf("offered %v to the client answering for its old address %v; want that address", got, ip3)
	}
	took()

	// A reservation is never checked.
	ts.booter.set(macN(4), Boot{IP: netip.MustParseAddr("10.0.0.20")})
	mustType(t, ts.do(t, discover(macN(4), nil)), dhcpv4.MessageTypeOffer)
	if got := took(); len(got) != 0 {
		t.Errorf("checked %v for a reservation", got)
	}

	// A check that fails offers unchecked.
	fail = errors.New("no packet socket")
	if r := ts.do(t, discover(macN(5), nil)); r == nil {
		t.Error("no offer when the check failed")
	}
	fail = nil

	// A pool full of squatters: no offer, after maxConflicts checks.
	for v := u32(testRange[0]); v <= u32(testRange[1]); v++ {
		inUse[addrFromU32(v)] = squatter
	}
	ts.clock.Add(time.Hour) // every withheld address and offer has expired
	took()
	if r := ts.do(t, discover(macN(6), nil)); r != nil {
		t.Errorf("offered %v from a pool of squatted addresses", r.pkt.YourIPAddr)
	}
	if got := took(); len(got) != maxConflicts {
		t.Errorf("checked %d addresses; want %d", len(got), maxConflicts)
	}
}
