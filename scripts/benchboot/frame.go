package main

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Header sizes and protocol numbers of the frames the DHCP load generator
// sends and reads.
const (
	ethHeaderLen  = 14
	ipv4HeaderLen = 20
	udpHeaderLen  = 8
	etherTypeIPv4 = 0x0800
	protoUDP      = 17
	dhcpServerUDP = 67
	dhcpClientUDP = 68
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(sum uint32, b []byte) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// udpFrame returns an Ethernet II frame carrying payload in a UDP datagram
// over IPv4 (no options, TTL 64, both checksums set).
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	udpLen := udpHeaderLen + len(payload)
	b := make([]byte, ethHeaderLen+ipv4HeaderLen+udpLen)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:14], etherTypeIPv4)

	ip := b[ethHeaderLen : ethHeaderLen+ipv4HeaderLen]
	ip[0] = 0x45 // version 4, 5 words of header
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipv4HeaderLen+udpLen))
	ip[8] = 64 // TTL
	ip[9] = protoUDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:12], checksum(0, ip))

	udp := b[ethHeaderLen+ipv4HeaderLen:]
	binary.BigEndian.PutUint16(udp[0:2], src.Port())
	binary.BigEndian.PutUint16(udp[2:4], dst.Port())
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpLen))
	copy(udp[udpHeaderLen:], payload)
	// Pseudo-header: source, destination, protocol, UDP length.
	var sum uint32
	for _, w := range [][]byte{s4[:], d4[:]} {
		sum += uint32(binary.BigEndian.Uint16(w[0:2])) + uint32(binary.BigEndian.Uint16(w[2:4]))
	}
	sum += protoUDP + uint32(udpLen)
	c := checksum(sum, udp)
	if c == 0 {
		c = 0xffff // 0 means "no checksum" (RFC 768)
	}
	binary.BigEndian.PutUint16(udp[6:8], c)
	return b
}

// parseUDPFrame returns the addresses and payload of a UDP datagram in an
// Ethernet II frame carrying IPv4, or ok false for anything else
// (including fragments).
func parseUDPFrame(b []byte) (src, dst netip.AddrPort, payload []byte, ok bool) {
	if len(b) < ethHeaderLen+ipv4HeaderLen+udpHeaderLen || binary.BigEndian.Uint16(b[12:14]) != etherTypeIPv4 {
		return src, dst, nil, false
	}
	ip := b[ethHeaderLen:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	fragment := binary.BigEndian.Uint16(ip[6:8]) & 0x3fff // MF flag or an offset
	if ip[0]>>4 != 4 || ihl < ipv4HeaderLen || ip[9] != protoUDP || fragment != 0 || total > len(ip) || total < ihl+udpHeaderLen {
		return src, dst, nil, false
	}
	udp := ip[ihl:total]
	udpLen := int(binary.BigEndian.Uint16(udp[4:6]))
	if udpLen < udpHeaderLen || udpLen > len(udp) {
		return src, dst, nil, false
	}
	src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(udp[0:2]))
	dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(udp[2:4]))
	return src, dst, udp[udpHeaderLen:udpLen], true
}
