package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/rackboot/rackboot/internal/rawio"
)

// Well-known ports.
const (
	// ServerPort is the DHCP server port (RFC 2131 section 4.1).
	ServerPort = 67
	// ClientPort is the DHCP client port.
	ClientPort = 68
	// PXEPort is the PXE boot server port (PXE specification 2.1) on which
	// proxyDHCP servers answer clients' ProxyDHCPREQUESTs.
	PXEPort = 4011
)

// Defaults for the zero values of Server's fields.
const (
	// DefaultLeaseTime is the lease time in full mode.
	DefaultLeaseTime = time.Hour
	// DefaultOfferTimeout is how long an offered address stays held for
	// the client it was offered to, waiting for its REQUEST.
	DefaultOfferTimeout = time.Minute
	// DefaultDeclineTimeout is how long an address a client declined
	// (RFC 2131 section 4.3.3: it found the address in use) stays out of
	// the pool.
	DefaultDeclineTimeout = 10 * time.Minute
	// DefaultProbeTimeout bounds [Server.Probe]: how long it listens for
	// other servers' offers. Servers answer in milliseconds unless they
	// ping an address before offering it: ISC dhcpd waits 1 s, and
	// dnsmasq (by default) drops DISCOVERs until its 3 s ping times out
	// and answers a retransmission (measured: 3.03 s). So the probe
	// retransmits its DISCOVER every ProbeInterval, and listens for 5 s.
	DefaultProbeTimeout = 5 * time.Second
	// ProbeInterval is the retransmission interval of the probe's DISCOVER.
	ProbeInterval = time.Second
	// DefaultMaxInFlight bounds the packets handled at once per Serve;
	// packets arriving beyond it wait in the socket's receive buffer (and
	// are lost if it overflows: DHCP clients retransmit).
	DefaultMaxInFlight = 64
	// DefaultHandleTimeout bounds the handling of one packet, including
	// the Booter and LeaseStore calls it makes.
	DefaultHandleTimeout = 5 * time.Second
	// MaxConflictWait bounds Server.ConflictWait, so that the checks of
	// one DISCOVER fit its handling time.
	MaxConflictWait = time.Second
	// DefaultWriteTimeout bounds the sending of one reply.
	DefaultWriteTimeout = time.Second
	// MaxPoolSize is the largest dynamic range a full-mode server accepts
	// (RangeEnd - RangeStart + 1). Address selection scans the range.
	MaxPoolSize = 1 << 16
)

// Mode is how a Server takes part in DHCP on its interface.
type Mode int

const (
	// ModeProxy is proxyDHCP (PXE specification 2.1): the network keeps
	// its own DHCP server for addresses, and this server answers only PXE
	// clients (vendor class "PXEClient..."), with offers that carry boot
	// information and no address, plus their requests on port 4011. It
	// never hands out addresses. It is the zero Mode, so a Server that is
	// merely given a Booter can't take over a network.
	ModeProxy Mode = iota
	// ModeFull is an authoritative DHCP server (RFC 2131) for Subnet:
	// reservations from the Booter, a dynamic range for other clients,
	// and boot information in the same replies.
	ModeFull
)

// String returns "proxy" or "full".
func (m Mode) String() string {
	switch m {
	case ModeProxy:
		return "proxy"
	case ModeFull:
		return "full"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler, accepting "proxy" and
// "full".
func (m *Mode) UnmarshalText(b []byte) error {
	switch string(b) {
	case "proxy":
		*m = ModeProxy
	case "full":
		*m = ModeFull
	default:
		return fmt.Errorf("unknown DHCP mode %q (want proxy or full)", b)
	}
	return nil
}

// Server is a DHCPv4 server for one interface, in full or proxy mode. The
// zero value with a Booter set is a proxyDHCP server (with Interface, for
// [Server.ListenAndServe]); full mode also needs ServerIP, Subnet,
// RangeStart and RangeEnd. Fields must not change once serving starts. A
// Server must not be copied after first use.
//
// # Concurrency
//
// Each Serve handles up to MaxInFlight packets concurrently, each in the
// goroutine that read it; the lease table is shared and locked. LeaseFor,
// MACFor and ActiveLeases are safe to call at any time.
//
// # Shutdown
//
// When the context passed to Serve is done, Serve closes its conn, waits
// for the packets being handled (their contexts are cancelled too, so
// Booter and LeaseStore calls should return promptly), and returns nil.
type Server struct {
	// Mode selects full or proxy DHCP. The zero value is ModeProxy.
	Mode Mode
	// Interface is the network interface to serve. ListenAndServe binds
	// its sockets to it (SO_BINDTODEVICE); Serve uses it for layer 2
	// unicast replies and Client.Interface. Empty: Serve answers whatever
	// arrives on its conn and broadcasts instead of unicasting at layer 2.
	Interface string
	// ServerIP is our address on Interface: the server identifier (option
	// 54), the default next server (siaddr) and the log server (option
	// 7). Zero: ListenAndServe takes the first IPv4 address of Interface.
	ServerIP netip.Addr
	// Subnet is the network served in full mode (option 1 is its mask,
	// option 28 its broadcast address). ServerIP and the dynamic range
	// must be inside it. Relayed requests (giaddr set) are answered only
	// when giaddr is inside it too.
	Subnet netip.Prefix
	// RangeStart and RangeEnd bound the dynamic pool (inclusive) in full
	// mode; at most MaxPoolSize addresses. ServerIP, Router, DNS and the
	// subnet's network and broadcast addresses are never handed out.
	RangeStart, RangeEnd netip.Addr
	// Router is sent as option 3 in full mode, if set.
	Router netip.Addr
	// DNS servers are sent as option 6 in full mode, if any.
	DNS []netip.Addr
	// LeaseTime is the full-mode lease time (option 51; T1 and T2 are
	// 1/2 and 7/8 of it); 0 means DefaultLeaseTime.
	LeaseTime time.Duration
	// OfferTimeout is how long an offered address is held; 0 means
	// DefaultOfferTimeout.
	OfferTimeout time.Duration
	// DeclineTimeout is how long a declined address is withheld; 0 means
	// DefaultDeclineTimeout.
	DeclineTimeout time.Duration
	// ConflictWait, if positive, turns on the conflict check in full
	// mode: before it offers a pool address the server broadcasts an ARP
	// probe for it on Interface (RFC 5227) and waits this long for a host
	// to answer. An address another host answers for is withheld for
	// DeclineTimeout, with a warning, and the next one is tried; the
	// offer waits for the check. Reservations are not checked: the
	// Booter says whose they are. It needs a packet socket (Linux,
	// CAP_NET_RAW) on an Ethernet Interface; without one the server logs
	// why and offers unchecked.
	ConflictWait time.Duration

	// Booter decides what each client gets. Required.
	Booter Booter
	// Leases persists full-mode leases; nil keeps them in memory only.
	Leases LeaseStore

	// OnReply, if set, is called after each reply is sent, from the
	// goroutine that handled the request: for boot timelines.
	OnReply func(Reply)
	// SkipProbe disables the check in ListenAndServe that no other DHCP
	// server answers on Interface before serving in full mode.
	SkipProbe bool
	// ProbeTimeout bounds that check; 0 means DefaultProbeTimeout.
	ProbeTimeout time.Duration

	// MaxInFlight bounds concurrently handled packets per Serve; 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
	// HandleTimeout bounds the handling of one packet; 0 means
	// DefaultHandleTimeout.
	HandleTimeout time.Duration
	// WriteTimeout bounds the sending of one reply; 0 means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration

	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now. A test seam for
	// lease expiry.
	Now func() time.Time

	// noIPXEOption leaves option 175 out of replies to iPXE: a test seam
	// for measuring what it saves.
	noIPXEOption bool
	// conflict, if set, is the conflict check: the hardware address of
	// a host that answers for ip, or nil. Set up from ConflictWait; a
	// test seam.
	conflict func(ctx context.Context, ip netip.Addr) (net.HardwareAddr, error)

	startMu sync.Mutex
	started bool
	ifaceIP netip.Addr // ServerIP found on Interface by ListenAndServe
	cfg     config     // derived from the fields by start; read-only after

	mu    sync.Mutex // guards table
	table leaseTable

	journal leaseJournal // lease changes on their way to Leases
}

// config is the validated, derived form of Server's fields.
type config struct {
	serverIP      netip.Addr
	subnet        netip.Prefix // masked
	bcast         netip.Addr
	start, end    uint32 // dynamic pool, inclusive
	leaseTime     time.Duration
	offerTimeout  time.Duration
	declineTime   time.Duration
	handleTimeout time.Duration
	writeTimeout  time.Duration
	maxInFlight   int
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrFromU32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// check validates the fields and derives the configuration.
func (s *Server) check() (config, error) {
	c := config{
		serverIP:      s.ServerIP.Unmap(),
		leaseTime:     orDefault(s.LeaseTime, DefaultLeaseTime),
		offerTimeout:  orDefault(s.OfferTimeout, DefaultOfferTimeout),
		declineTime:   orDefault(s.DeclineTimeout, DefaultDeclineTimeout),
		handleTimeout: orDefault(s.HandleTimeout, DefaultHandleTimeout),
		writeTimeout:  orDefault(s.WriteTimeout, DefaultWriteTimeout),
		maxInFlight:   orDefault(s.MaxInFlight, DefaultMaxInFlight),
	}
	if s.Booter == nil {
		return c, errors.New("dhcp: Server.Booter is nil")
	}
	if !c.serverIP.IsValid() {
		c.serverIP = s.ifaceIP
	}
	if !c.serverIP.Is4() || c.serverIP.IsUnspecified() {
		return c, errors.New("dhcp: Server.ServerIP must be set to an IPv4 address (or Interface have one, for ListenAndServe)")
	}
	if c.leaseTime > 0xfffffffe*time.Second {
		return c, fmt.Errorf("dhcp: lease time %v too long", c.leaseTime)
	}
	if s.ConflictWait > MaxConflictWait {
		return c, fmt.Errorf("dhcp: conflict wait %v too long (at most %v: a host on the segment answers ARP within milliseconds)", s.ConflictWait, MaxConflictWait)
	}
	if s.Mode == ModeProxy {
		return c, nil
	}
	if s.Mode != ModeFull {
		return c, fmt.Errorf("dhcp: unknown mode %v", s.Mode)
	}
	p := s.Subnet.Masked()
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30 {
		return c, fmt.Errorf("dhcp: full mode needs an IPv4 Subnet between /8 and /30, not %v", s.Subnet)
	}
	c.subnet = p
	c.bcast = addrFromU32(u32(p.Addr()) | (1<<(32-p.Bits()) - 1))
	if !p.Contains(c.serverIP) {
		return c, fmt.Errorf("dhcp: ServerIP %v is outside Subnet %v", c.serverIP, p)
	}
	start, end := s.RangeStart.Unmap(), s.RangeEnd.Unmap()
	if !p.Contains(start) || !p.Contains(end) {
		return c, fmt.Errorf("dhcp: range %v-%v is not inside Subnet %v", s.RangeStart, s.RangeEnd, p)
	}
	if start.Compare(end) > 0 {
		return c, fmt.Errorf("dhcp: RangeStart %v is after RangeEnd %v", start, end)
	}
	c.start, c.end = u32(start), u32(end)
	if c.end-c.start >= MaxPoolSize {
		return c, fmt.Errorf("dhcp: range %v-%v holds more than %d addresses", start, end, MaxPoolSize)
	}
	if s.Router.IsValid() && !s.Router.Unmap().Is4() {
		return c, fmt.Errorf("dhcp: Router %v is not IPv4", s.Router)
	}
	for _, d := range s.DNS {
		if !d.Unmap().Is4() {
			return c, fmt.Errorf("dhcp: DNS server %v is not IPv4", d)
		}
	}
	return c, nil
}

// start validates the configuration and loads leases, once.
func (s *Server) start(ctx context.Context) error {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.started {
		return nil
	}
	cfg, err := s.check()
	if err != nil {
		return err
	}
	s.cfg = cfg
	if s.Mode == ModeFull && s.Leases != nil {
		if err := s.loadLeases(ctx); err != nil {
			return err
		}
	}
	s.started = true
	return nil
}

func (s *Server) loadLeases(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.handleTimeout)
	defer cancel()
	leases, err := s.Leases.LoadLeases(ctx)
	if err != nil {
		return fmt.Errorf("loading DHCP leases: %w", err)
	}
	log := s.logger()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.table.init()
	for _, l := range leases {
		ip := l.IP.Unmap()
		if len(l.MAC) == 0 || len(l.MAC) > 16 || !s.cfg.subnet.Contains(ip) {
			log.Warn("ignoring stored lease outside the subnet", "mac", l.MAC.String(), "ip", l.IP.String())
			continue
		}
		if old := s.table.byIP[ip]; old != nil && old.expiry.After(l.Expiry) {
			continue // two stored leases for one address: keep the later one
		}
		s.table.put(&binding{mac: string(l.MAC), ip: ip, expiry: l.Expiry, hostname: l.Hostname, state: stateBound})
	}
	return nil
}

// ListenAndServe serves DHCP on Interface until ctx is done. It binds UDP
// port 67 to the interface and, in proxy mode, port 4011 as well. In full
// mode it first runs [Server.Probe] (unless SkipProbe) and refuses to
// start if another DHCP server answers. It opens every socket before it
// returns or starts serving, in the calling goroutine (so a caller can run
// it on a thread inside a network namespace), and returns the errors of
// its listeners joined, or nil after a clean shutdown.
func (s *Server) ListenAndServe(ctx context.Context) error {
	if s.Interface == "" {
		return errors.New("dhcp: ListenAndServe needs Server.Interface")
	}
	ifi, err := net.InterfaceByName(s.Interface)
	if err != nil {
		return fmt.Errorf("dhcp: %w", err)
	}
	if !s.ServerIP.IsValid() {
		ip, err := interfaceIPv4(ifi)
		if err != nil {
			return err
		}
		s.startMu.Lock()
		s.ifaceIP = ip
		s.startMu.Unlock()
	}
	if err := s.start(ctx); err != nil {
		return err
	}
	if s.Mode == ModeFull && !s.SkipProbe {
		if err := s.probe(ctx, ifi); err != nil {
			if ctx.Err() != nil {
				return nil // shut down while probing
			}
			return err
		}
	}
	conn, err := listenUDP(ctx, s.Interface, ServerPort)
	if err != nil {
		return fmt.Errorf("dhcp: listening on %s port %d (is another DHCP server running on this host?): %w", s.Interface, ServerPort, err)
	}
	var l2 *rawConn
	if s.Mode == ModeFull {
		var closeLink func()
		l2, closeLink = s.openLink(ifi)
		defer closeLink()
	}
	var pxe *net.UDPConn
	if s.Mode == ModeProxy {
		if pxe, err = listenUDP(ctx, s.Interface, PXEPort); err != nil {
			conn.Close()
			return fmt.Errorf("dhcp: listening on %s port %d: %w", s.Interface, PXEPort, err)
		}
	}
	s.logger().Info("serving DHCP", "mode", s.Mode.String(), "interface", s.Interface, "ip", s.cfg.serverIP.String())
	if pxe == nil {
		return s.serve(ctx, conn, portDHCP, l2)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.serve(ctx, pxe, portPXE, nil) }()
	err = s.serve(ctx, conn, portDHCP, l2)
	return errors.Join(err, <-errc)
}

// interfaceIPv4 returns the first IPv4 address of ifi.
func interfaceIPv4(ifi *net.Interface) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("dhcp: addresses of %s: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && ip.IsGlobalUnicast() {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("dhcp: interface %s has no IPv4 address; set Server.ServerIP", ifi.Name)
}

// openL2 opens the send-only packet socket for layer 2 unicast, or returns
// nil (and the server broadcasts instead) if it can't.
func (s *Server) openL2(ifi *net.Interface) *rawConn {
	if ifi.Flags&net.FlagBroadcast == 0 || len(ifi.HardwareAddr) != 6 {
		return nil
	}
	l2, err := openRaw(ifi.Index, etherTypeIPv4, false)
	if err != nil {
		s.logger().Warn("no layer 2 unicast, will broadcast replies", "interface", ifi.Name, "err", err)
		return nil
	}
	return l2
}

// openLink opens full mode's packet sockets on ifi: the send-only one
// for layer 2 unicast (nil: replies are broadcast instead), and the
// conflict check's, which closeCheck closes once serving ends.
func (s *Server) openLink(ifi *net.Interface) (l2 *rawConn, closeCheck func()) {
	l2 = s.openL2(ifi)
	if a := s.openConflictCheck(ifi); a != nil {
		return l2, func() { a.Close() }
	}
	return l2, func() {}
}

// openConflictCheck turns on the conflict check on ifi if ConflictWait
// asks for it and probes can be sent there. The caller closes what it
// returns (nil: no check).
func (s *Server) openConflictCheck(ifi *net.Interface) *arpChecker {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.ConflictWait <= 0 || s.conflict != nil {
		return nil
	}
	a, err := newARPChecker(ifi, s.ConflictWait)
	if err != nil {
		s.logger().Warn("no conflict check: can't send ARP probes; offering pool addresses unchecked", "interface", ifi.Name, "err", err)
		return nil
	}
	s.conflict = a.check
	return a
}

// Serve answers DHCP packets arriving on conn, which should be a UDP
// socket bound to port 67 (bound to Interface, if set, and allowed to
// broadcast: Serve sets SO_BROADCAST when it can). It returns nil after
// ctx is done, as described in the Shutdown section, or an error if conn
// fails or the configuration is invalid. It closes conn. Serve does not
// probe for other servers; see [Server.Probe].
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	if err := s.start(ctx); err != nil {
		conn.Close()
		return err
	}
	var l2 *rawConn
	if s.Mode == ModeFull && s.Interface != "" {
		if ifi, err := net.InterfaceByName(s.Interface); err == nil {
			var closeLink func()
			l2, closeLink = s.openLink(ifi)
			defer closeLink()
		} else {
			s.logger().Warn("no layer 2 unicast, will broadcast replies", "interface", s.Interface, "err", err)
		}
	}
	return s.serve(ctx, conn, portDHCP, l2)
}

// ServePXE answers PXE boot server requests (ProxyDHCPREQUESTs, PXE
// specification 2.1) arriving on conn, which should be a UDP socket bound
// to port 4011. Replies go back to the sender's address. Shutdown is as for
// Serve. ListenAndServe runs it in proxy mode; full-mode replies carry
// the boot information already, so PXE clients don't ask there.
func (s *Server) ServePXE(ctx context.Context, conn net.PacketConn) error {
	if err := s.start(ctx); err != nil {
		conn.Close()
		return err
	}
	return s.serve(ctx, conn, portPXE, nil)
}

// kernelWait is how long the reading worker waits for the next packet in
// the kernel before it parks in the network poller. Shutdown, which closes
// the socket, can lag by as much.
const kernelWait = time.Millisecond

// maxDatagram is the read buffer size: any UDP payload.
const maxDatagram = 1 << 16

func (s *Server) serve(ctx context.Context, conn net.PacketConn, p port, l2 *rawConn) error {
	defer conn.Close()
	if l2 != nil {
		defer l2.Close()
	}
	enableBroadcast(conn)
	log := s.logger()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var serveErr error
	buf := make([]byte, maxDatagram) // only the reading worker uses it
	var backoff time.Duration
	queued := queuedFunc(conn)
	var rc syscall.RawConn
	if sc, ok := conn.(syscall.Conn); ok {
		rc, _ = sc.SyscallConn()
	}
	more := false // the last read left packets queued; only the reading worker uses it
	rd := &readers{max: s.cfg.maxInFlight}
	rd.read = func(released func(bool)) bool {
		for {
			if rc != nil && !more {
				// A client's next packet (its REQUEST after our OFFER,
				// the next client's DISCOVER) is usually a round trip
				// away: wait for it in the kernel, so that it wakes this
				// thread directly (see rawio.WaitReadable). With packets
				// queued already, the read below finds one at once.
				rawio.WaitReadable(rc, kernelWait)
			}
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				if ctx.Err() != nil {
					return false
				}
				if isTemporary(err) {
					backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
					log.Error("reading DHCP packet failed, retrying", "err", err, "dur", backoff)
					select {
					case <-time.After(backoff):
					case <-ctx.Done():
					}
					continue
				}
				serveErr = fmt.Errorf("reading DHCP packets: %w", err)
				return false
			}
			backoff = 0
			pkt := append([]byte(nil), buf[:n]...)
			more = queued()
			released(more)
			s.servePacket(ctx, conn, l2, pkt, addrPortOf(from), p)
			return true
		}
	}
	rd.run()
	return serveErr
}

func isTemporary(err error) bool {
	return errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.ECONNREFUSED)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

func (s *Server) servePacket(ctx context.Context, conn net.PacketConn, l2 *rawConn, pkt []byte, peer netip.AddrPort, p port) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.handleTimeout)
	defer cancel()
	r := s.handle(ctx, pkt, peer, p)
	if r == nil || ctx.Err() != nil {
		return
	}
	s.send(conn, l2, r)
	if s.OnReply != nil {
		ip, _ := netip.AddrFromSlice(r.pkt.YourIPAddr.To4())
		s.OnReply(Reply{
			MAC:      append(net.HardwareAddr(nil), r.pkt.ClientHWAddr...),
			Type:     r.pkt.MessageType().String(),
			IP:       ip,
			BootFile: r.pkt.BootFileName,
		})
	}
}

// Reply describes a reply the server sent, for Server.OnReply.
type Reply struct {
	MAC net.HardwareAddr
	// Type is the DHCP message type: "OFFER", "ACK" or "NAK".
	Type     string
	IP       netip.Addr // yiaddr, zero in proxy replies and NAKs
	BootFile string
}

// send delivers a reply: at layer 2 when the route says so and a packet
// socket is available, else through conn.
func (s *Server) send(conn net.PacketConn, l2 *rawConn, r *reply) {
	b := marshal(r.pkt, r.prl)
	deadline := time.Now().Add(s.cfg.writeTimeout)
	dst := r.dst
	if r.hw != nil {
		if l2 != nil {
			src := netip.AddrPortFrom(s.cfg.serverIP, ServerPort)
			err := l2.writeTo(appendIPv4UDP(nil, src, dst, b), r.hw, deadline)
			if err == nil {
				s.logReply(slog.LevelDebug, "sent reply", r, "peer", dst, "ip", r.pkt.YourIPAddr)
				return
			}
			s.logReply(slog.LevelWarn, "layer 2 unicast failed, broadcasting", r, "err", err)
		}
		// Without a packet socket we can't address a client that has no
		// IP yet; RFC 2131 section 4.1 lets the server broadcast then.
		dst = broadcastClient
	}
	if err := conn.SetWriteDeadline(deadline); err != nil {
		s.logReply(slog.LevelError, "setting write deadline failed", r, "err", err)
		return
	}
	if _, err := conn.WriteTo(b, net.UDPAddrFromAddrPort(dst)); err != nil {
		s.logReply(slog.LevelError, "sending reply failed", r, "peer", dst, "err", err)
		return
	}
	s.logReply(slog.LevelDebug, "sent reply", r, "peer", dst, "ip", r.pkt.YourIPAddr)
}

// logReply logs msg about reply r, if the logger takes that level: the
// reply's attributes cost more to format than sending it.
func (s *Server) logReply(level slog.Level, msg string, r *reply, args ...any) {
	log := s.logger()
	if !log.Enabled(context.Background(), level) {
		return
	}
	args = append([]any{"mac", r.pkt.ClientHWAddr.String(), "xid", r.pkt.TransactionID.String(), "type", r.pkt.MessageType().String()}, args...)
	log.Log(context.Background(), level, msg, args...)
}
