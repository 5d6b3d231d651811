package dhcp

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 and UDP headers for the datagrams the server sends and receives at
// layer 2 (replies to clients that have no address yet, and the probe for
// other servers), where the kernel's UDP stack can't help.

const (
	ipv4HeaderLen = 20
	udpHeaderLen  = 8
	protoUDP      = 17
	etherTypeIPv4 = 0x0800
)

// appendIPv4UDP appends an IPv4 header (no options, DF set, TTL 64), a UDP
// header with a checksum, and payload to b.
func appendIPv4UDP(b []byte, src, dst netip.AddrPort, payload []byte) []byte {
	total := ipv4HeaderLen + udpHeaderLen + len(payload)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	start := len(b)
	b = append(b,
		0x45, 0, // version 4, IHL 5; DSCP/ECN 0
		byte(total>>8), byte(total),
		0, 0, // identification
		0x40, 0, // don't fragment
		64, protoUDP,
		0, 0, // header checksum, below
	)
	b = append(b, s4[:]...)
	b = append(b, d4[:]...)
	binary.BigEndian.PutUint16(b[start+10:], checksum(b[start:start+ipv4HeaderLen], 0))

	udp := len(b)
	ulen := udpHeaderLen + len(payload)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint16(b, uint16(ulen))
	b = append(b, 0, 0)
	b = append(b, payload...)
	// Pseudo-header: addresses, zero, protocol, UDP length (RFC 768).
	var sum uint32
	sum = sumWords(s4[:], sum)
	sum = sumWords(d4[:], sum)
	sum += protoUDP + uint32(ulen)
	c := checksum(b[udp:], sum)
	if c == 0 {
		c = 0xffff // 0 means "no checksum" in UDP over IPv4
	}
	binary.BigEndian.PutUint16(b[udp+6:], c)
	return b
}

// parseIPv4UDP returns the addresses and payload of an unfragmented IPv4
// UDP datagram, or ok false for anything else. It checks lengths, not
// checksums (the kernel has verified the Ethernet FCS).
func parseIPv4UDP(b []byte) (src, dst netip.AddrPort, payload []byte, ok bool) {
	if len(b) < ipv4HeaderLen || b[0]>>4 != 4 {
		return src, dst, nil, false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if ihl < ipv4HeaderLen || total < ihl+udpHeaderLen || total > len(b) || b[9] != protoUDP {
		return src, dst, nil, false
	}
	if binary.BigEndian.Uint16(b[6:])&0x3fff != 0 { // MF flag or a fragment offset
		return src, dst, nil, false
	}
	udp := b[ihl:total]
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen < udpHeaderLen || ulen > len(udp) {
		return src, dst, nil, false
	}
	src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), binary.BigEndian.Uint16(udp[0:]))
	dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), binary.BigEndian.Uint16(udp[2:]))
	return src, dst, udp[udpHeaderLen:ulen], true
}

func sumWords(b []byte, sum uint32) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	sum = sumWords(b, sum)
	for sum>>16 != 0 {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
