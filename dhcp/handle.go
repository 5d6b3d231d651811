package dhcp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// port says which socket a packet arrived on.
type port int

const (
	portDHCP port = iota // 67
	portPXE              // 4011
)

// reply is an answer and where it goes.
type reply struct {
	pkt *dhcpv4.DHCPv4
	// dst is the destination address and port.
	dst netip.AddrPort
	// hw, if set, asks for layer 2 unicast to this hardware address:
	// the client has no address yet, so dst (yiaddr:68) can't be ARPed.
	hw net.HardwareAddr
	// prl is the request's parameter request list (option 55), the
	// order the client would like the options in.
	prl []byte
}

var (
	broadcastClient = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), ClientPort)
	zeroIP          = net.IPv4zero.To4()
)

// maxHops is the largest hop count accepted from relays (RFC 1542
// section 4.1.1 recommends 16 as the relay's own limit).
const maxHops = 16

// handle is the whole per-packet logic: parse, validate, decide and build
// the reply (nil: stay silent). It does not send. It is what FuzzHandle
// exercises.
func (s *Server) handle(ctx context.Context, b []byte, peer netip.AddrPort, p port) *reply {
	log := s.logger()
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		log.Debug("ignoring malformed packet", "peer", peer.String(), "err", err)
		return nil
	}
	if err := validRequest(req); err != nil {
		log.Debug("ignoring invalid request", "peer", peer.String(), "err", err)
		return nil
	}
	log = log.With("mac", req.ClientHWAddr.String(), "xid", req.TransactionID.String())
	log.Debug("received", "type", req.MessageType().String(), "peer", peer.String())
	r := s.decide(ctx, log, req, peer, p)
	if r != nil {
		fitReply(log, req, r.pkt)
		r.prl = req.Options[dhcpv4.OptionParameterRequestList.Code()]
	}
	return r
}

// decide handles a valid request: the reply, or nil.
func (s *Server) decide(ctx context.Context, log *slog.Logger, req *dhcpv4.DHCPv4, peer netip.AddrPort, p port) *reply {
	if p == portPXE {
		return s.handlePXE(ctx, log, req, peer)
	}
	if s.Mode == ModeProxy {
		return s.handleProxy(ctx, log, req)
	}
	if gi := ipv4Of(req.GatewayIPAddr); gi.IsValid() && !s.cfg.subnet.Contains(gi) {
		log.Debug("ignoring request relayed from another subnet", "peer", gi.String())
		return nil
	}
	switch mt := req.MessageType(); mt {
	case dhcpv4.MessageTypeDiscover:
		return s.discover(ctx, log, req)
	case dhcpv4.MessageTypeRequest:
		return s.request(ctx, log, req)
	case dhcpv4.MessageTypeDecline:
		s.decline(ctx, log, req)
	case dhcpv4.MessageTypeRelease:
		s.release(ctx, log, req)
	case dhcpv4.MessageTypeInform:
		return s.inform(ctx, log, req)
	default:
		log.Debug("ignoring message type", "type", mt.String())
	}
	return nil
}

var (
	errNotRequest = errors.New("not a BOOTREQUEST")
	errNoMsgType  = errors.New("no DHCP message type (BOOTP is not supported)")
	errBadHWAddr  = errors.New("bad client hardware address")
	errHops       = errors.New("too many relay hops")
)

func validRequest(req *dhcpv4.DHCPv4) error {
	switch {
	case req.OpCode != dhcpv4.OpcodeBootRequest:
		return errNotRequest
	case req.MessageType() == dhcpv4.MessageTypeNone:
		return errNoMsgType
	case len(req.ClientHWAddr) == 0 || allZero(req.ClientHWAddr):
		return errBadHWAddr
	case req.HWType == iana.HWTypeEthernet && len(req.ClientHWAddr) != 6:
		return errBadHWAddr
	case req.HopCount > maxHops:
		return errHops
	}
	return nil
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

// ipv4Of returns the IPv4 address in ip, or the zero Addr if ip is not
// IPv4 or is 0.0.0.0.
func ipv4Of(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

// optAddr returns option code as an IPv4 address, if it is exactly one.
func optAddr(req *dhcpv4.DHCPv4, code uint8) netip.Addr {
	v := req.Options[code]
	if len(v) != 4 {
		return netip.Addr{}
	}
	a := netip.AddrFrom4([4]byte(v))
	if a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

func ipOf(a netip.Addr) net.IP {
	if !a.IsValid() {
		return append(net.IP(nil), zeroIP...)
	}
	b := a.As4()
	return net.IP(b[:])
}

// requested reports whether the client listed code in its parameter
// request list (option 55).
func requested(req *dhcpv4.DHCPv4, code uint8) bool {
	return bytes.IndexByte(req.Options[dhcpv4.OptionParameterRequestList.Code()], code) >= 0
}

// boot asks the Booter about c; ok false means stay silent.
func (s *Server) boot(ctx context.Context, log *slog.Logger, c Client) (Boot, bool) {
	b, err := s.Booter.Boot(ctx, c)
	if err != nil {
		log.Error("boot policy failed", "firmware", c.Firmware.String(), "err", err)
		return Boot{}, false
	}
	if b.Ignore {
		log.Debug("ignoring client", "firmware", c.Firmware.String())
		return Boot{}, false
	}
	if err := checkBoot(b); err != nil {
		log.Error("boot policy returned an unusable answer", "firmware", c.Firmware.String(), "err", err)
		return Boot{}, false
	}
	return b, true
}

var (
	errBootString = errors.New("boot file, hostname, PXELINUX config or path prefix longer than 255 bytes")
	errBootAddr   = errors.New("IP or NextServer is not IPv4")
)

func checkBoot(b Boot) error {
	for _, v := range []string{b.BootFile, b.Hostname, b.PXELinuxConfig, b.PathPrefix} {
		if len(v) > 255 {
			return errBootString
		}
	}
	if (b.IP.IsValid() && !b.IP.Unmap().Is4()) || (b.NextServer.IsValid() && !b.NextServer.Unmap().Is4()) {
		return errBootAddr
	}
	return nil
}

// newReply starts a reply to req of type mt with the fields RFC 2131
// table 3 copies from the request, the server identifier, and the relay
// agent information option (RFC 3046 section 2.2).
func (s *Server) newReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	resp := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  ipOf(netip.Addr{}),
		YourIPAddr:    ipOf(netip.Addr{}),
		ServerIPAddr:  ipOf(netip.Addr{}),
		GatewayIPAddr: ipOf(ipv4Of(req.GatewayIPAddr)),
		ClientHWAddr:  append(net.HardwareAddr(nil), req.ClientHWAddr...),
		Options:       dhcpv4.Options{},
	}
	resp.Options[dhcpv4.OptionDHCPMessageType.Code()] = []byte{byte(mt)}
	resp.Options[dhcpv4.OptionServerIdentifier.Code()] = ipOf(s.cfg.serverIP)
	if ri, ok := req.Options[dhcpv4.OptionRelayAgentInformation.Code()]; ok {
		resp.Options[dhcpv4.OptionRelayAgentInformation.Code()] = ri
	}
	return resp
}

// addBoot adds the boot information of b to resp: siaddr, the file
// field, and options 66, 67, 209 and 210.
func (s *Server) addBoot(resp, req *dhcpv4.DHCPv4, b Boot) {
	if b.BootFile == "" {
		return
	}
	next := b.NextServer.Unmap()
	if !next.IsValid() {
		next = s.cfg.serverIP
	}
	resp.ServerIPAddr = ipOf(next)
	if len(b.BootFile) < 128 {
		resp.BootFileName = b.BootFile
	}
	if len(b.BootFile) >= 128 || requested(req, dhcpv4.OptionBootfileName.Code()) {
		resp.Options[dhcpv4.OptionBootfileName.Code()] = []byte(b.BootFile)
	}
	if requested(req, dhcpv4.OptionTFTPServerName.Code()) {
		resp.Options[dhcpv4.OptionTFTPServerName.Code()] = []byte(next.String())
	}
	if b.PXELinuxConfig != "" {
		resp.Options[optPXELinuxConfig] = []byte(b.PXELinuxConfig)
	}
	if b.PathPrefix != "" {
		resp.Options[optPathPrefix] = []byte(b.PathPrefix)
	}
}

// ipxeNoProxyDHCP is option 175 with iPXE's DHCP_EB_NO_PXEDHCP (176) set
// to 1: iPXE then takes the first DHCPOFFER at once instead of waiting
// DHCP_DISC_PROXY_TIMEOUT_SEC (2 s, in practice ~3 s) for ProxyDHCP offers
// (src/net/udp/dhcp.c, dhcp_discovery_rx). Encapsulated options are plain
// code/length/value triples, as ISC dhcpd encodes "option
// ipxe.no-pxedhcp 1".
var ipxeNoProxyDHCP = []byte{optIPXENoPXEDHCP, 1, 1}

// addNetwork adds the full-mode network configuration to resp. lease
// selects the lease time options (not for DHCPINFORM, RFC 2131 4.3.5).
func (s *Server) addNetwork(resp *dhcpv4.DHCPv4, c Client, hostname string, lease bool) {
	o := resp.Options
	mask := net.CIDRMask(s.cfg.subnet.Bits(), 32)
	o[dhcpv4.OptionSubnetMask.Code()] = []byte(mask)
	o[dhcpv4.OptionBroadcastAddress.Code()] = ipOf(s.cfg.bcast)
	if s.Router.IsValid() {
		o[dhcpv4.OptionRouter.Code()] = ipOf(s.Router.Unmap())
	}
	if len(s.DNS) > 0 {
		var dns []byte
		for _, d := range s.DNS {
			dns = append(dns, ipOf(d.Unmap())...)
		}
		o[dhcpv4.OptionDomainNameServer.Code()] = dns
	}
	o[dhcpv4.OptionLogServer.Code()] = ipOf(s.cfg.serverIP)
	if hostname != "" {
		o[dhcpv4.OptionHostName.Code()] = []byte(hostname)
	}
	if lease {
		secs := func(d time.Duration) []byte {
			v := uint32(d / time.Second)
			return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
		}
		o[dhcpv4.OptionIPAddressLeaseTime.Code()] = secs(s.cfg.leaseTime)
		o[dhcpv4.OptionRenewTimeValue.Code()] = secs(s.cfg.leaseTime / 2)
		o[dhcpv4.OptionRebindingTimeValue.Code()] = secs(s.cfg.leaseTime - s.cfg.leaseTime/8) // 7/8, without overflowing
	}
	if c.Firmware == FirmwareIPXE && !s.noIPXEOption {
		o[optIPXEEncap] = ipxeNoProxyDHCP
	}
}

// route returns where a reply to req goes, per RFC 2131 section 4.1:
// through the relay agent if giaddr is set; DHCPNAKs broadcast; to ciaddr
// if the client has an address; broadcast if the client asked for it (or
// the reply has no address to unicast to); else unicast to yiaddr at
// layer 2, since the client can't answer ARP yet. A NAK through a relay
// gets the broadcast bit so the relay broadcasts it (section 4.3.2).
func route(req, resp *dhcpv4.DHCPv4) (netip.AddrPort, net.HardwareAddr) {
	nak := resp.MessageType() == dhcpv4.MessageTypeNak
	if gi := ipv4Of(req.GatewayIPAddr); gi.IsValid() {
		if nak {
			resp.SetBroadcast()
		}
		return netip.AddrPortFrom(gi, ServerPort), nil
	}
	if nak {
		return broadcastClient, nil
	}
	if ci := ipv4Of(req.ClientIPAddr); ci.IsValid() {
		return netip.AddrPortFrom(ci, ClientPort), nil
	}
	yi := ipv4Of(resp.YourIPAddr)
	if req.IsBroadcast() || !yi.IsValid() || req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return broadcastClient, nil
	}
	return netip.AddrPortFrom(yi, ClientPort), append(net.HardwareAddr(nil), req.ClientHWAddr...)
}

func (s *Server) routed(req, resp *dhcpv4.DHCPv4) *reply {
	dst, hw := route(req, resp)
	return &reply{pkt: resp, dst: dst, hw: hw}
}

// --- Full mode -----------------------------------------------------------

func (s *Server) discover(ctx context.Context, log *slog.Logger, req *dhcpv4.DHCPv4) *reply {
	c := Classify(req, s.Interface)
	b, ok := s.boot(ctx, log, c)
	if !ok {
		return nil
	}
	ip, ok := s.offerAddress(ctx, log, c.MAC, b, optAddr(req, dhcpv4.OptionRequestedIPAddress.Code()))
	if !ok {
		return nil
	}
	resp := s.newReply(req, dhcpv4.MessageTypeOffer)
	resp.YourIPAddr = ipOf(ip)
	s.addNetwork(resp, c, b.Hostname, true)
	s.addBoot(resp, req, b)
	log.Debug("offering", "ip", ip.String(), "firmware", c.Firmware.String(), "file", b.BootFile)
	return s.routed(req, resp)
}

// requestState is the client state a DHCPREQUEST comes from (RFC 2131
// section 4.3.2).
type requestState int

const (
	selecting  requestState = iota // answering our offer: server id set
	initReboot                     // verifying a remembered address: option 50, no ciaddr
	renewing                       // extending a lease: ciaddr set (renewing or rebinding)
)

func (s *Server) request(ctx context.Context, log *slog.Logger, req *dhcpv4.DHCPv4) *reply {
	sid := optAddr(req, dhcpv4.OptionServerIdentifier.Code())
	want := optAddr(req, dhcpv4.OptionRequestedIPAddress.Code())
	ci := ipv4Of(req.ClientIPAddr)
	var state requestState
	var ip netip.Addr
	switch {
	case sid.IsValid():
		if sid != s.cfg.serverIP {
			// The client chose another server's offer.
			s.forgetOffer(req.ClientHWAddr)
			return nil
		}
		state, ip = selecting, want
		if !ip.IsValid() {
			ip = ci
		}
	case want.IsValid() && !ci.IsValid():
		state, ip = initReboot, want
	case ci.IsValid():
		state, ip = renewing, ci
	}
	if !ip.IsValid() {
		log.Warn("request names no address")
		return nil
	}
	c := Classify(req, s.Interface)
	b, ok := s.boot(ctx, log, c)
	if !ok {
		return nil
	}
	hostname := b.Hostname
	if hostname == "" {
		hostname = req.HostName()
	}
	l, renewed, why, err := s.commit(ctx, c.MAC, b, ip, hostname, state == selecting)
	if err != nil {
		log.Error("saving lease failed", "ip", ip.String(), "err", err)
		return nil
	}
	if why != "" {
		log.Info("refusing address", "ip", ip.String(), "reason", why)
		resp := s.newReply(req, dhcpv4.MessageTypeNak)
		resp.Options[dhcpv4.OptionMessage.Code()] = []byte(why)
		return s.routed(req, resp)
	}
	resp := s.newReply(req, dhcpv4.MessageTypeAck)
	resp.ClientIPAddr = ipOf(ci)
	resp.YourIPAddr = ipOf(l.IP)
	s.addNetwork(resp, c, b.Hostname, true)
	s.addBoot(resp, req, b)
	if renewed {
		log.Debug("lease renewed", "ip", l.IP.String())
	} else {
		log.Info("lease granted", "ip", l.IP.String(), "firmware", c.Firmware.String(), "file", b.BootFile)
	}
	return s.routed(req, resp)
}

func (s *Server) inform(ctx context.Context, log *slog.Logger, req *dhcpv4.DHCPv4) *reply {
	ci := ipv4Of(req.ClientIPAddr)
	if !ci.IsValid() {
		log.Warn("DHCPINFORM without ciaddr")
		return nil
	}
	if !s.cfg.subnet.Contains(ci) {
		// Our mask and router would be wrong for it (as commit NAKs a
		// REQUEST from another network).
		log.Info("ignoring DHCPINFORM from another network", "ciaddr", ci.String())
		return nil
	}
	c := Classify(req, s.Interface)
	b, ok := s.boot(ctx, log, c)
	if !ok {
		return nil
	}
	resp := s.newReply(req, dhcpv4.MessageTypeAck)
	resp.ClientIPAddr = ipOf(ci)
	s.addNetwork(resp, c, b.Hostname, false)
	s.addBoot(resp, req, b)
	return s.routed(req, resp)
}

func (s *Server) decline(ctx context.Context, log *slog.Logger, req *dhcpv4.DHCPv4) {
	if sid := optAddr(req, dhcpv4.OptionServerIdentifier.Code()); sid != s.cfg.serverIP {
		return
	}
	ip := optAddr(req, dhcpv4.OptionRequestedIPAddress.Code())
	mac := string(req.ClientHWAddr)
	s.mu.Lock()
	b := s.table.byIP[ip]
	if b == nil || b.mac != mac {
		s.mu.Unlock()
		return
	}
	s.table.put(&binding{ip: ip, expiry: s.now().Add(s.cfg.declineTime), state: stateDeclined})
	var batch *leaseBatch
	if b.state == stateBound {
		batch = s.queueDelete(req.ClientHWAddr)
	}
	s.mu.Unlock()
	log.Warn("client declined address, another host may be using it", "ip", ip.String())
	s.deleteLease(ctx, log, batch)
}

func (s *Server) release(ctx context.Context, log *slog.Logger, req *dhcpv4.DHCPv4) {
	if sid := optAddr(req, dhcpv4.OptionServerIdentifier.Code()); sid.IsValid() && sid != s.cfg.serverIP {
		return
	}
	ip := ipv4Of(req.ClientIPAddr)
	mac := string(req.ClientHWAddr)
	s.mu.Lock()
	b := s.table.byIP[ip]
	if b == nil || b.mac != mac || b.state != stateBound {
		s.mu.Unlock()
		return
	}
	// Keep the entry, expired, so the client gets the same address next
	// time if nobody else has taken it.
	b.expiry = s.now()
	batch := s.queueDelete(req.ClientHWAddr)
	s.mu.Unlock()
	log.Info("lease released", "ip", ip.String())
	s.deleteLease(ctx, log, batch)
}

// queueDelete queues the deletion of mac's stored lease, if there is a
// store. Call it under s.mu, so that the store sees the table's order.
func (s *Server) queueDelete(mac net.HardwareAddr) *leaseBatch {
	if s.Leases == nil {
		return nil
	}
	return s.journal.add(LeaseChange{Lease: Lease{MAC: mac}, Delete: true})
}

// deleteLease waits for a deletion queued by queueDelete (nil: none).
func (s *Server) deleteLease(ctx context.Context, log *slog.Logger, batch *leaseBatch) {
	if batch == nil {
		return
	}
	if err := s.journal.wait(ctx, s.Leases, batch); err != nil {
		log.Error("deleting lease failed", "err", err)
	}
}

// --- Address management (full mode) --------------------------------------

// excluded reports addresses never handed out dynamically.
func (s *Server) excluded(ip netip.Addr) bool {
	if ip == s.cfg.serverIP || ip == s.cfg.subnet.Addr() || ip == s.cfg.bcast || ip == s.Router.Unmap() {
		return true
	}
	for _, d := range s.DNS {
		if ip == d.Unmap() {
			return true
		}
	}
	return false
}

func (s *Server) inPool(ip netip.Addr) bool {
	if !ip.Is4() {
		return false
	}
	v := u32(ip)
	return v >= s.cfg.start && v <= s.cfg.end && !s.excluded(ip)
}

// reservation returns the fixed address of b, if it has a usable one.
func (s *Server) reservation(log *slog.Logger, b Boot) (netip.Addr, bool) {
	ip := b.IP.Unmap()
	if !ip.IsValid() {
		return ip, false
	}
	if !s.cfg.subnet.Contains(ip) || ip == s.cfg.serverIP || ip == s.cfg.subnet.Addr() || ip == s.cfg.bcast {
		log.Error("reserved address unusable in this subnet", "ip", ip.String())
		return netip.Addr{}, true
	}
	return ip, true
}

// maxConflicts bounds the pool addresses one DISCOVER checks and finds
// in use before the server gives up on it (the client asks again).
const maxConflicts = 4

// offerAddress chooses the address to offer mac: its reservation, else a
// pool address (poolAddress) that no other host answers for, when the
// conflict check is on. An address another host answers for is withheld
// for DeclineTimeout, as if a client had declined it.
func (s *Server) offerAddress(ctx context.Context, log *slog.Logger, mac net.HardwareAddr, b Boot, want netip.Addr) (netip.Addr, bool) {
	if ip, ok := s.reservation(log, b); ok {
		return ip, ip.IsValid()
	}
	for range maxConflicts {
		ip, held, ok := s.poolAddress(log, mac, want)
		if !ok || held || s.conflict == nil {
			return ip, ok
		}
		other, err := s.conflict(ctx, ip)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return netip.Addr{}, false
			}
			log.Warn("conflict check failed; offering the address unchecked", "ip", ip.String(), "err", err)
			return ip, true
		case other == nil, bytes.Equal(other, mac): // nobody, or the client itself
			return ip, true
		}
		log.Warn("pool address in use by another host; withheld", "ip", ip.String(), "host", other.String(), "for", s.cfg.declineTime)
		s.withhold(mac, ip)
		want = netip.Addr{}
	}
	log.Error("every pool address checked for this client was in use by another host; is the pool shared with static addresses?", "checked", maxConflicts)
	return netip.Addr{}, false
}

// withhold takes ip, offered to mac, out of the pool for DeclineTimeout.
func (s *Server) withhold(mac net.HardwareAddr, ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.table.byIP[ip]; b != nil && b.mac == string(mac) && b.state == stateOffered {
		s.table.put(&binding{ip: ip, expiry: s.now().Add(s.cfg.declineTime), state: stateDeclined})
	}
}

// poolAddress picks the pool address to offer mac: the address it had,
// else the one it asks for, else a free one (never used addresses first,
// then the longest expired), and records the offer. held reports that
// mac's lease on it is still running, so that checking it is pointless.
func (s *Server) poolAddress(log *slog.Logger, mac net.HardwareAddr, want netip.Addr) (ip netip.Addr, held, ok bool) {
	key := string(mac)
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.table.init()
	old := s.table.byMAC[key]
	switch {
	case old != nil && s.inPool(old.ip) && s.table.freeFor(old.ip, key, now):
		ip = old.ip
	case want.IsValid() && s.inPool(want) && s.table.freeFor(want, key, now):
		ip = want
	default:
		ip = s.pick(key, now)
	}
	if !ip.IsValid() {
		log.Warn("address pool exhausted")
		return ip, false, false
	}
	if old != nil && old.ip == ip && old.state == stateBound && old.activeAt(now) {
		return ip, true, true // its lease is still running: offer it as is
	}
	hostname := ""
	if old != nil {
		hostname = old.hostname
	}
	s.table.put(&binding{mac: key, ip: ip, expiry: now.Add(s.cfg.offerTimeout), hostname: hostname, state: stateOffered})
	return ip, false, true
}

// pick returns a free pool address: the lowest one nobody holds, found
// from a cursor (after the last address given, or the lowest freed since)
// so that handing out a pool costs linear time, not quadratic; else the
// one whose binding expired longest ago. s.mu must be held.
func (s *Server) pick(mac string, now time.Time) netip.Addr {
	size := s.cfg.end - s.cfg.start + 1
	t := &s.table
	if t.cursor < s.cfg.start || t.cursor > s.cfg.end {
		t.cursor = s.cfg.start
	}
	for i := uint32(0); i < size; i++ {
		v := s.cfg.start + (t.cursor-s.cfg.start+i)%size
		ip := addrFromU32(v)
		if !s.excluded(ip) && t.byIP[ip] == nil {
			t.cursor = v + 1
			return ip
		}
	}
	var best *binding
	for v := s.cfg.start; ; v++ {
		ip := addrFromU32(v)
		if !s.excluded(ip) {
			b := s.table.byIP[ip]
			if s.table.freeFor(ip, mac, now) && (best == nil || b.expiry.Before(best.expiry)) {
				best = b
			}
		}
		if v == s.cfg.end {
			break
		}
	}
	if best == nil {
		return netip.Addr{}
	}
	return best.ip
}

// forgetOffer releases the address offered to mac, which chose another
// server.
func (s *Server) forgetOffer(mac net.HardwareAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.table.byMAC[string(mac)]; b != nil && b.state == stateOffered {
		s.table.remove(b)
	}
}

// commit binds ip to mac if that is right, and persists the lease. It
// returns the lease and whether it extends a current one, or a reason to
// NAK, or a store error. selecting requires that ip be the address we
// offered (RFC 2131 section 4.3.2).
func (s *Server) commit(ctx context.Context, mac net.HardwareAddr, b Boot, ip netip.Addr, hostname string, selecting bool) (l Lease, renewed bool, nak string, err error) {
	log := s.logger()
	key := string(mac)
	now := s.now()
	s.mu.Lock()
	s.table.init()
	if !s.cfg.subnet.Contains(ip) {
		s.mu.Unlock()
		return Lease{}, false, "address not on this network", nil
	}
	if res, ok := s.reservation(log, b); ok {
		if ip != res {
			s.mu.Unlock()
			return Lease{}, false, "wrong address for this client", nil
		}
	} else {
		old := s.table.byMAC[key]
		switch {
		case !s.inPool(ip):
			s.mu.Unlock()
			return Lease{}, false, "address not available", nil
		case !s.table.freeFor(ip, key, now):
			s.mu.Unlock()
			return Lease{}, false, "address in use", nil
		case selecting && (old == nil || old.ip != ip):
			s.mu.Unlock()
			return Lease{}, false, "address not offered to this client", nil
		}
	}
	if old := s.table.byMAC[key]; old != nil && old.ip == ip && old.state == stateBound && old.activeAt(now) {
		renewed = true
	}
	nb := &binding{mac: key, ip: ip, expiry: now.Add(s.cfg.leaseTime), hostname: hostname, state: stateBound}
	nb.prev = s.table.byMAC[key]
	displaced := s.table.put(nb)
	l = nb.lease()
	var batch *leaseBatch
	if s.Leases != nil {
		// Queued under s.mu: the store sees the table's order.
		var changes []LeaseChange
		if displaced != nil {
			changes = append(changes, LeaseChange{Lease: Lease{MAC: net.HardwareAddr(displaced.mac)}, Delete: true})
		}
		batch = s.journal.add(append(changes, LeaseChange{Lease: l})...)
	}
	s.mu.Unlock()

	if displaced != nil {
		log.Warn("reservation takes over a dynamic lease", "ip", ip.String(), "mac", net.HardwareAddr(displaced.mac).String())
	}
	if batch == nil {
		return l, renewed, "", nil
	}
	if err := s.journal.wait(ctx, s.Leases, batch); err != nil {
		s.undo(nb, displaced)
		return Lease{}, false, "", err
	}
	s.mu.Lock()
	nb.prev = nil // saved: nothing to go back to
	s.mu.Unlock()
	return l, renewed, "", nil
}

// undo takes back a binding whose lease the store failed to save (no ACK
// goes out): the table, which LeaseFor and MACFor answer from, returns to
// what the store holds, unless later requests changed it meanwhile. A
// retransmitted REQUEST can put a second binding on top of the first in
// the same failed batch, and the two undo in either order: the bindings
// that failed are marked, and the one put back is the newest before them
// that didn't.
func (s *Server) undo(nb, displaced *binding) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	nb.unsaved = true
	if s.table.byMAC[nb.mac] != nb {
		return
	}
	s.table.remove(nb)
	prev := nb.prev
	for prev != nil && prev.unsaved {
		prev = prev.prev
	}
	nb.prev = nil
	for _, b := range []*binding{prev, displaced} {
		if b != nil && s.table.byMAC[b.mac] == nil && s.table.freeFor(b.ip, b.mac, now) {
			s.table.put(b)
		}
	}
}

// --- Proxy mode (PXE specification 2.1) ----------------------------------

// pxeDiscoverySkip is option 43 with PXE_DISCOVERY_CONTROL (6) = 8: skip
// boot server discovery and download the boot file named in the offer
// (PXE specification 2.1, table 2-1; iPXE calls it PXEBS_SKIP). Ended by
// the End option, as PXE ROMs expect of encapsulated vendor options.
var pxeDiscoverySkip = []byte{optPXEDiscovery, 1, 8, 255}

// addPXE adds what a proxyDHCP or boot server reply carries: option 60
// "PXEClient" (which makes it a PXE reply), the client's UUID back
// (option 97), boot information, and for BIOS PXE and iPXE the discovery
// control option. UEFI PXE is left without option 43: some UEFI firmware
// ignores proxy offers that try to skip discovery and instead asks port
// 4011, which works everywhere (observed by pixiecore).
func (s *Server) addPXE(resp, req *dhcpv4.DHCPv4, c Client, b Boot) {
	resp.Options[dhcpv4.OptionClassIdentifier.Code()] = []byte("PXEClient")
	if u, ok := req.Options[dhcpv4.OptionClientMachineIdentifier.Code()]; ok {
		resp.Options[dhcpv4.OptionClientMachineIdentifier.Code()] = u
	}
	s.addBoot(resp, req, b)
	resp.ServerHostName = ipv4Of(resp.ServerIPAddr).String()
	switch c.Firmware {
	case FirmwareBIOS, FirmwareIPXE, FirmwareUnknown:
		resp.Options[dhcpv4.OptionVendorSpecificInformation.Code()] = pxeDiscoverySkip
	}
}

func (s *Server) handleProxy(ctx context.Context, log *slog.Logger, req *dhcpv4.DHCPv4) *reply {
	mt := req.MessageType()
	var rt dhcpv4.MessageType
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		rt = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		// A ProxyDHCPREQUEST belongs on port 4011, but answer one sent
		// to us on port 67; requests for the site's server aren't ours.
		if optAddr(req, dhcpv4.OptionServerIdentifier.Code()) != s.cfg.serverIP {
			return nil
		}
		rt = dhcpv4.MessageTypeAck
	default:
		return nil
	}
	c := Classify(req, s.Interface)
	if !isPXEClient(c.VendorClass) {
		log.Debug("ignoring non-PXE client", "type", mt.String())
		return nil
	}
	b, ok := s.boot(ctx, log, c)
	if !ok {
		return nil
	}
	if b.BootFile == "" {
		log.Debug("no boot file for PXE client", "firmware", c.Firmware.String())
		return nil
	}
	resp := s.newReply(req, rt)
	s.addPXE(resp, req, c, b)
	log.Debug("proxy offer", "firmware", c.Firmware.String(), "file", b.BootFile)
	return s.routed(req, resp)
}

// handlePXE answers a request to the PXE boot server port with a DHCPACK
// carrying the boot information, sent back to where the request came
// from.
func (s *Server) handlePXE(ctx context.Context, log *slog.Logger, req *dhcpv4.DHCPv4, peer netip.AddrPort) *reply {
	if req.MessageType() != dhcpv4.MessageTypeRequest {
		return nil
	}
	c := Classify(req, s.Interface)
	if !isPXEClient(c.VendorClass) {
		log.Debug("ignoring non-PXE client on the PXE port")
		return nil
	}
	b, ok := s.boot(ctx, log, c)
	if !ok || b.BootFile == "" {
		return nil
	}
	resp := s.newReply(req, dhcpv4.MessageTypeAck)
	resp.ClientIPAddr = ipOf(ipv4Of(req.ClientIPAddr))
	s.addPXE(resp, req, c, b)
	if item := pxeBootItem(req.Options[dhcpv4.OptionVendorSpecificInformation.Code()]); item != nil {
		// Echo the boot item the client asked for (PXE spec 2.1, 2.2.2).
		o43 := append([]byte{optPXEBootItem, byte(len(item))}, item...)
		resp.Options[dhcpv4.OptionVendorSpecificInformation.Code()] = append(o43, 255)
	}
	dst := peer
	if !dst.Addr().Is4() || dst.Addr().IsUnspecified() || dst.Port() == 0 {
		dst = broadcastClient
	}
	log.Debug("boot server reply", "firmware", c.Firmware.String(), "file", b.BootFile, "peer", dst.String())
	return &reply{pkt: resp, dst: dst}
}

// pxeBootItem returns sub-option 71 (boot item: type and layer) of a PXE
// option 43, or nil.
func pxeBootItem(o43 []byte) []byte {
	for len(o43) >= 2 {
		code, n := o43[0], int(o43[1])
		if code == 255 {
			return nil
		}
		if code == 0 {
			o43 = o43[1:]
			continue
		}
		if n > len(o43)-2 {
			return nil
		}
		if code == optPXEBootItem && n == 4 {
			return append([]byte(nil), o43[2:6]...)
		}
		o43 = o43[2+n:]
	}
	return nil
}
