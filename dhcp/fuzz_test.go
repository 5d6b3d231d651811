package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// fuzzBooter derives a decision from the MAC, so that inputs reach every
// kind of answer: reservations (some outside the subnet), silence,
// dynamic addresses with short and long boot files.
var fuzzBooter = BooterFunc(func(_ context.Context, c Client) (Boot, error) {
	if len(c.MAC) == 0 {
		return Boot{}, nil
	}
	switch c.MAC[len(c.MAC)-1] % 5 {
	case 0:
		return Boot{IP: netip.AddrFrom4([4]byte{10, 0, 0, c.MAC[0]}), Hostname: "b", BootFile: "lpxelinux.0", PXELinuxConfig: "c", PathPrefix: "/"}, nil
	case 1:
		return Boot{Ignore: true}, nil
	case 2:
		return Boot{BootFile: string(bytes.Repeat([]byte{'u'}, 200)), NextServer: netip.MustParseAddr("10.0.0.9")}, nil
	case 3:
		return Boot{IP: netip.MustParseAddr("192.168.0.1")}, nil
	}
	return Boot{BootFile: "ipxe.efi"}, nil
})

// FuzzHandle feeds up to three packets through the server's per-packet
// logic (parse, decide, build the reply), in full mode, proxy mode or on
// the PXE port, and checks that it doesn't panic and that every reply is a
// well-formed DHCP reply to that request, addressed by the rules of RFC
// 2131 section 4.1.
func FuzzHandle(f *testing.F) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 4}
	pxe := map[uint8][]byte{60: []byte("PXEClient:Arch:00000:UNDI:002001"), 93: {0, 0}, 77: []byte("iPXE"), 97: make([]byte, 17)}
	d := discover(mac, pxe)
	r := selectOffer(mac, srvIP, testRange[0])
	rb := renew(mac, testRange[0])
	rb.SetBroadcast()
	rel := request(dhcpv4.MessageTypeRelease, mac, map[uint8][]byte{54: srvIP.AsSlice()})
	rel.ClientIPAddr = testRange[0].AsSlice()
	dec := request(dhcpv4.MessageTypeDecline, mac, map[uint8][]byte{54: srvIP.AsSlice(), 50: testRange[0].AsSlice()})
	inf := request(dhcpv4.MessageTypeInform, macN(5), nil)
	inf.ClientIPAddr = net.IP{10, 0, 0, 99}
	relayed := discover(macN(10), nil)
	relayed.GatewayIPAddr = net.IP{10, 0, 0, 3}
	pxeReq := request(dhcpv4.MessageTypeRequest, mac, map[uint8][]byte{60: []byte("PXEClient"), 43: {71, 4, 0, 0, 0, 0, 255}})
	// Real packets from Debian's iPXE ROM and U-Boot (see TestRealPackets).
	realDisc, _ := os.ReadFile("testdata/ipxe-discover.bin")
	realReq, _ := os.ReadFile("testdata/ipxe-request.bin")
	uboot64, _ := os.ReadFile("testdata/uboot-arm64-discover.bin")
	uboot32, _ := os.ReadFile("testdata/uboot-arm-discover.bin")
	for _, seed := range [][3][]byte{
		{realDisc, realReq, rel.ToBytes()},
		{uboot64, uboot32, realDisc},
		{d.ToBytes(), r.ToBytes(), rb.ToBytes()},
		{d.ToBytes(), r.ToBytes(), rel.ToBytes()},
		{d.ToBytes(), r.ToBytes(), dec.ToBytes()},
		{inf.ToBytes(), relayed.ToBytes(), pxeReq.ToBytes()},
		{discover(macN(3), nil).ToBytes(), discover(macN(2), nil).ToBytes(), discover(macN(0), nil).ToBytes()},
		{nil, []byte("garbage"), bytes.Repeat([]byte{0x63}, 300)},
	} {
		for mode := range 3 {
			f.Add(uint8(mode), seed[0], seed[1], seed[2])
		}
	}
	f.Fuzz(func(t *testing.T, mode uint8, p1, p2, p3 []byte) {
		if len(p1)+len(p2)+len(p3) > 3*1500 {
			return
		}
		s := &Server{
			Mode:       ModeFull,
			Interface:  "eth9",
			ServerIP:   srvIP,
			Subnet:     netip.MustParsePrefix("10.0.0.0/24"),
			RangeStart: testRange[0],
			RangeEnd:   testRange[1],
			Router:     netip.MustParseAddr("10.0.0.254"),
			DNS:        []netip.Addr{netip.MustParseAddr("10.0.0.53")},
			Booter:     fuzzBooter,
			Leases:     &memStore{},
			Now:        newClock().Now,
		}
		p := portDHCP
		switch mode % 3 {
		case 1:
			s.Mode = ModeProxy
		case 2:
			s.Mode = ModeProxy
			p = portPXE
		}
		if err := s.start(t.Context()); err != nil {
			t.Fatal(err)
		}
		peer := netip.MustParseAddrPort("10.0.0.77:68")
		for _, b := range [][]byte{p1, p2, p3} {
			r := s.handle(t.Context(), b, peer, p)
			if r == nil {
				continue
			}
			req, err := dhcpv4.FromBytes(b)
			if err != nil {
				t.Fatalf("answered an unparsable packet: %v", err)
			}
			checkReply(t, s, req, r, p, peer)
		}
	})
}

func checkReply(t *testing.T, s *Server, req *dhcpv4.DHCPv4, r *reply, p port, peer netip.AddrPort) {
	t.Helper()
	wire := r.pkt.ToBytes()
	if len(wire) > 1500 {
		t.Fatalf("reply of %d bytes", len(wire))
	}
	resp, err := dhcpv4.FromBytes(wire)
	if err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	mt := resp.MessageType()
	switch {
	case resp.OpCode != dhcpv4.OpcodeBootReply:
		t.Fatalf("reply opcode %v", resp.OpCode)
	case resp.TransactionID != req.TransactionID || !bytes.Equal(resp.ClientHWAddr, req.ClientHWAddr) || resp.HWType != req.HWType:
		t.Fatalf("reply xid/chaddr/htype %v %v %v; request %v %v %v", resp.TransactionID, resp.ClientHWAddr, resp.HWType,
			req.TransactionID, req.ClientHWAddr, req.HWType)
	case mt != dhcpv4.MessageTypeOffer && mt != dhcpv4.MessageTypeAck && mt != dhcpv4.MessageTypeNak:
		t.Fatalf("reply type %v", mt)
	case ipv4Of(resp.ServerIdentifier()) != srvIP:
		t.Fatalf("server identifier %v", resp.ServerIdentifier())
	}
	yi := ipv4Of(resp.YourIPAddr)
	if s.Mode == ModeProxy && yi.IsValid() {
		t.Fatalf("proxy reply hands out %v", yi)
	}
	if s.Mode == ModeFull && yi.IsValid() {
		if !s.cfg.subnet.Contains(yi) || yi == srvIP || yi == s.cfg.bcast || yi == s.cfg.subnet.Addr() {
			t.Fatalf("handed out %v", yi)
		}
		if yi.As4()[3] < 100 || yi.As4()[3] > 103 { // outside the pool: must be the fuzz reservation
			if b, _ := fuzzBooter.Boot(t.Context(), Classify(req, "")); b.IP != yi {
				t.Fatalf("handed out %v, neither from the pool nor reserved", yi)
			}
		}
	}

	// Routing, restated from RFC 2131 section 4.1.
	var wantDst netip.AddrPort
	wantL2 := false
	gi, ci := ipv4Of(req.GatewayIPAddr), ipv4Of(req.ClientIPAddr)
	switch {
	case p == portPXE:
		wantDst = peer
	case gi.IsValid():
		wantDst = netip.AddrPortFrom(gi, 67)
		if mt == dhcpv4.MessageTypeNak && !resp.IsBroadcast() {
			t.Fatalf("relayed NAK without broadcast bit")
		}
	case mt == dhcpv4.MessageTypeNak:
		wantDst = broadcastClient
	case ci.IsValid():
		wantDst = netip.AddrPortFrom(ci, 68)
	case req.IsBroadcast() || !yi.IsValid() || req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6:
		wantDst = broadcastClient
	default:
		wantDst, wantL2 = netip.AddrPortFrom(yi, 68), true
	}
	if r.dst != wantDst || (r.hw != nil) != wantL2 || (wantL2 && !bytes.Equal(r.hw, req.ClientHWAddr)) {
		t.Fatalf("%v routed to %v (hw %v); want %v (layer 2 %v)", mt, r.dst, r.hw, wantDst, wantL2)
	}
	if wantL2 {
		// The frame we'd build must parse back to the same datagram.
		frame := appendIPv4UDP(nil, netip.AddrPortFrom(srvIP, 67), r.dst, wire)
		src, dst, payload, ok := parseIPv4UDP(frame)
		if !ok || src.Port() != 67 || dst != r.dst || !bytes.Equal(payload, wire) {
			t.Fatalf("layer 2 frame does not round-trip")
		}
		if binary.BigEndian.Uint16(frame[2:]) != uint16(len(frame)) {
			t.Fatalf("bad IP total length")
		}
	}
}

// FuzzParseARP: any frame parses or is refused without a panic, and a
// probe we build parses back.
func FuzzParseARP(f *testing.F) {
	f.Add(appendARPProbe(nil, net.HardwareAddr{2, 0, 0, 0, 0, 1}, netip.MustParseAddr("10.0.0.100")))
	f.Add([]byte{0, 1, 8, 0, 6, 4, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := parseARP(b)
		if !ok {
			return
		}
		if len(p.senderHW) != 6 || !p.senderIP.Is4() {
			t.Fatalf("parsed %+v from % x", p, b)
		}
	})
}
