//go:build linux

package dhcp

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// receivedRA is a router advertisement as a host sees it.
type receivedRA struct {
	src, dst   netip.Addr
	hopLimit   int
	body       []byte // from the ICMPv6 type on
	curHop     uint8
	flags      uint8
	lifetime   uint16
	reachable  uint32
	retrans    uint32
	options    map[uint8][]byte
	optionList []uint8
}

// raListener receives router advertisements in a host's namespace.
type raListener struct {
	p     *ipv6.PacketConn
	conn  *icmp.PacketConn
	index int
}

func listenRA(t *testing.T, h *host) *raListener {
	t.Helper()
	var l raListener
	h.do(t, func() {
		conn, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			t.Fatalf("ICMPv6 listener: %v", err)
		}
		l.conn = conn
		l.p = conn.IPv6PacketConn()
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeRouterAdvertisement)
		if err := l.p.SetICMPFilter(&f); err != nil {
			t.Fatal(err)
		}
		if err := l.p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst|ipv6.FlagInterface, true); err != nil {
			t.Fatal(err)
		}
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		l.index = ifi.Index
	})
	t.Cleanup(func() { l.conn.Close() })
	return &l
}

// next returns the next advertisement, or fails after timeout.
func (l *raListener) next(t *testing.T, timeout time.Duration) receivedRA {
	t.Helper()
	buf := make([]byte, 1500)
	l.conn.SetReadDeadline(time.Now().Add(timeout))
	n, cm, from, err := l.p.ReadFrom(buf)
	if err != nil {
		t.Fatalf("waiting for a router advertisement: %v", err)
	}
	b := buf[:n]
	if len(b) < 16 {
		t.Fatalf("router advertisement of %d bytes", len(b))
	}
	src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
	dst, _ := netip.AddrFromSlice(cm.Dst)
	ra := receivedRA{
		src: src, dst: dst, hopLimit: cm.HopLimit, body: b,
		curHop: b[4], flags: b[5],
		lifetime:  binary.BigEndian.Uint16(b[6:]),
		reachable: binary.BigEndian.Uint32(b[8:]),
		retrans:   binary.BigEndian.Uint32(b[12:]),
		options:   make(map[uint8][]byte),
	}
	for o := b[16:]; len(o) >= 2; {
		n := int(o[1]) * 8
		if n == 0 || n > len(o) {
			t.Fatalf("malformed option in % x", b)
		}
		ra.options[o[0]] = o[2:n]
		ra.optionList = append(ra.optionList, o[0])
		o = o[n:]
	}
	return ra
}

// checkNoIPv6 checks that ra tells hosts nothing: the properties that end
// iPXE's IPv6 autoconfiguration without starting DHCPv6.
func checkNoIPv6(t *testing.T, ra receivedRA, routerMAC net.HardwareAddr) {
	t.Helper()
	if !ra.src.IsLinkLocalUnicast() {
		t.Errorf("advertisement from %v; want a link-local source (RFC 4861 6.1.2)", ra.src)
	}
	if ra.hopLimit != 255 {
		t.Errorf("advertisement hop limit %d; want 255", ra.hopLimit)
	}
	if ra.body[0] != 134 || ra.body[1] != 0 {
		t.Errorf("ICMPv6 type/code %d/%d; want 134/0", ra.body[0], ra.body[1])
	}
	if ra.flags&0xc0 != 0 {
		t.Errorf("M/O flags set (%#x): iPXE would start DHCPv6", ra.flags)
	}
	if ra.lifetime != 0 || ra.curHop != 0 || ra.reachable != 0 || ra.retrans != 0 {
		t.Errorf("lifetime %d, hop limit %d, reachable %d, retrans %d; want all 0", ra.lifetime, ra.curHop, ra.reachable, ra.retrans)
	}
	if len(ra.optionList) != 1 || string(ra.options[1]) != string(routerMAC) {
		t.Errorf("options %v (source link-layer %x); want only the source link-layer address %v", ra.optionList, ra.options[1], routerMAC)
	}
}

func startAdvertiser(t *testing.T, h *host, a *Advertiser) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var conn net.PacketConn
	h.do(t, func() {
		// Open the socket here, so that the advertiser can't send before
		// the test's listener exists.
		var err error
		lc := net.ListenConfig{Control: bindToDevice(a.Interface)}
		if conn, err = lc.ListenPacket(ctx, "ip6:ipv6-icmp", "::"); err != nil {
			t.Fatal(err)
		}
	})
	done := h.goDo(func() error { return a.Serve(ctx, conn) })
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Advertiser.Serve: %v", err)
		}
	})
}

// TestAdvertiser captures the advertiser's router advertisements on
// another host: the unsolicited one at start, the unicast answer to a
// router solicitation from a link-local address, and the (rate-limited)
// multicast answer to one from the unspecified address.
func TestAdvertiser(t *testing.T) {
	l := newLAN(t, "srv", "cli")
	srv, cli := l.host("srv"), l.host("cli")
	// The client kernel's own solicitations would muddle the test.
	cli.sysctl(t, "net/ipv6/conf/eth0/router_solicitations", "0")
	rl := listenRA(t, cli)
	startAdvertiser(t, srv, &Advertiser{Interface: "eth0", Initial: 1, MinInterval: 300 * time.Millisecond, Logger: testLogger(t)})

	ra := rl.next(t, 5*time.Second)
	if ra.dst != allNodes {
		t.Errorf("unsolicited advertisement to %v; want %v", ra.dst, allNodes)
	}
	checkNoIPv6(t, ra, srv.mac)

	// A solicitation from our link-local address: a unicast answer.
	var cliLL netip.Addr
	cli.do(t, func() {
		ifi, _ := net.InterfaceByName("eth0")
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.(*net.IPNet).IP); ok && ip.IsLinkLocalUnicast() {
				cliLL = ip
			}
		}
	})
	rs, _ := (&icmp.Message{Type: ipv6.ICMPTypeRouterSolicitation, Body: &icmp.RawBody{Data: make([]byte, 4)}}).Marshal(nil)
	start := time.Now()
	if _, err := rl.p.WriteTo(rs, &ipv6.ControlMessage{HopLimit: 255, IfIndex: rl.index}, &net.IPAddr{IP: allRouters.AsSlice()}); err != nil {
		t.Fatalf("sending router solicitation: %v", err)
	}
	ra = rl.next(t, 5*time.Second)
	t.Logf("unicast advertisement %v after the solicitation", time.Since(start).Round(time.Microsecond))
	if ra.dst != cliLL {
		t.Errorf("answer to a solicitation from %v went to %v", cliLL, ra.dst)
	}
	checkNoIPv6(t, ra, srv.mac)

	// A solicitation with hop limit 64 is invalid (RFC 4861 6.1.1).
	if _, err := rl.p.WriteTo(rs, &ipv6.ControlMessage{HopLimit: 64, IfIndex: rl.index}, &net.IPAddr{IP: allRouters.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	// From the unspecified address (as a host without an address yet
	// sends it): a multicast answer.
	sendRSFromUnspecified(t, cli)
	ra = rl.next(t, 5*time.Second)
	if ra.dst != allNodes {
		t.Errorf("answer to a solicitation from :: went to %v; want %v", ra.dst, allNodes)
	}
	checkNoIPv6(t, ra, srv.mac)
	rl.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, _, _, err := rl.p.ReadFrom(make([]byte, 1500)); err == nil {
		t.Errorf("an extra advertisement: was the hop-limit-64 solicitation answered?")
	}
}

// sendRSFromUnspecified sends a router solicitation from :: on h's eth0,
// built by hand (the kernel won't send from ::) on a packet socket.
func sendRSFromUnspecified(t *testing.T, h *host) {
	t.Helper()
	dst := allRouters.As16()
	pkt := make([]byte, 40, 48)
	pkt[0] = 0x60
	binary.BigEndian.PutUint16(pkt[4:], 8) // payload length
	pkt[6], pkt[7] = 58, 255               // ICMPv6, hop limit
	copy(pkt[24:], dst[:])
	icmpRS := []byte{133, 0, 0, 0, 0, 0, 0, 0}
	var sum uint32
	sum = sumWords(dst[:], sum) // the source, ::, adds nothing
	sum += 8 + 58
	binary.BigEndian.PutUint16(icmpRS[2:], checksum(icmpRS, sum))
	pkt = append(pkt, icmpRS...)
	h.do(t, func() {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: ifi.Index, Halen: 6}
		copy(sa.Addr[:], []byte{0x33, 0x33, 0, 0, 0, 2})
		if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
			t.Fatalf("sending router solicitation from ::: %v", err)
		}
	})
}

func TestSolicitationValidation(t *testing.T) {
	from := &net.IPAddr{IP: net.ParseIP("fe80::1")}
	good := []byte{133, 0, 0, 0, 0, 0, 0, 0}
	tests := []struct {
		name string
		b    []byte
		cm   *ipv6.ControlMessage
		ok   bool
	}{
		{"valid", good, &ipv6.ControlMessage{HopLimit: 255, IfIndex: 3}, true},
		{"no control message", good, nil, false},
		{"hop limit 64", good, &ipv6.ControlMessage{HopLimit: 64, IfIndex: 3}, false},
		{"other interface", good, &ipv6.ControlMessage{HopLimit: 255, IfIndex: 4}, false},
		{"short", good[:7], &ipv6.ControlMessage{HopLimit: 255, IfIndex: 3}, false},
		{"code 1", []byte{133, 1, 0, 0, 0, 0, 0, 0}, &ipv6.ControlMessage{HopLimit: 255, IfIndex: 3}, false},
		{"advertisement", []byte{134, 0, 0, 0, 0, 0, 0, 0}, &ipv6.ControlMessage{HopLimit: 255, IfIndex: 3}, false},
	}
	for _, tt := range tests {
		if _, ok := solicitation(tt.b, tt.cm, from, 3); ok != tt.ok {
			t.Errorf("%s: solicitation() ok = %v; want %v", tt.name, ok, tt.ok)
		}
	}
}
