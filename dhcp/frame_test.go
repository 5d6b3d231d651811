package dhcp

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

func TestIPv4UDPFrame(t *testing.T) {
	src := netip.MustParseAddrPort("10.0.0.1:67")
	dst := netip.MustParseAddrPort("10.0.0.100:68")
	for _, payload := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte{0xab}, 301)} {
		b := appendIPv4UDP(nil, src, dst, payload)
		if got := checksum(b[:ipv4HeaderLen], 0); got != 0 {
			t.Errorf("IPv4 header checksum does not verify: %#x", got)
		}
		// UDP checksum over pseudo-header and datagram verifies to 0.
		var sum uint32
		s4, d4 := src.Addr().As4(), dst.Addr().As4()
		sum = sumWords(s4[:], sum)
		sum = sumWords(d4[:], sum)
		sum += protoUDP + uint32(udpHeaderLen+len(payload))
		if got := checksum(b[ipv4HeaderLen:], sum); got != 0 {
			t.Errorf("UDP checksum of %d-byte payload does not verify: %#x", len(payload), got)
		}
		gs, gd, gp, ok := parseIPv4UDP(b)
		if !ok || gs != src || gd != dst || !bytes.Equal(gp, payload) {
			t.Errorf("parseIPv4UDP(appendIPv4UDP(%v, %v, %d bytes)) = %v, %v, %d bytes, %v", src, dst, len(payload), gs, gd, len(gp), ok)
		}
	}
}

func TestParseIPv4UDPRejects(t *testing.T) {
	good := appendIPv4UDP(nil, netip.MustParseAddrPort("1.2.3.4:67"), netip.MustParseAddrPort("5.6.7.8:68"), []byte("payload"))
	mods := map[string]func(b []byte) []byte{
		"short":         func(b []byte) []byte { return b[:10] },
		"IPv6":          func(b []byte) []byte { b[0] = 0x65; return b },
		"IHL too small": func(b []byte) []byte { b[0] = 0x44; return b },
		"TCP":           func(b []byte) []byte { b[9] = 6; return b },
		"fragment":      func(b []byte) []byte { b[6] |= 0x20; return b },
		"total too big": func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 999); return b },
		"UDP len big":   func(b []byte) []byte { binary.BigEndian.PutUint16(b[24:], 999); return b },
		"UDP len small": func(b []byte) []byte { binary.BigEndian.PutUint16(b[24:], 3); return b },
	}
	for name, mod := range mods {
		b := mod(append([]byte(nil), good...))
		if _, _, _, ok := parseIPv4UDP(b); ok {
			t.Errorf("%s: parseIPv4UDP accepted % x", name, b)
		}
	}
	// Trailing Ethernet padding is ignored.
	if _, _, p, ok := parseIPv4UDP(append(append([]byte(nil), good...), 0, 0, 0)); !ok || string(p) != "payload" {
		t.Errorf("padded frame: %q, %v", p, ok)
	}
}
