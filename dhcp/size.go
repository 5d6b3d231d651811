package dhcp

import (
	"encoding/binary"
	"log/slog"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Reply size. Every DHCP client takes a 576-byte IP datagram, which
// leaves 548 bytes of DHCP message: 236 of fixed fields and 312 of
// options (RFC 2131 section 2). A client that takes more says so in
// option 57, as an IP datagram size (RFC 2132 section 9.10, whose
// minimum legal value is 576); U-Boot sends 576, PXE ROMs often 1260.
// Replies are never fragmented, so no more than an Ethernet frame holds.
const (
	minDatagram  = 576
	ipUDPHeaders = 20 + 8
	maxReplyLen  = 1500 - ipUDPHeaders
	// headerLen is the fixed fields and the magic cookie before the
	// options; bootpMinLen the shortest message, padded (RFC 951), as
	// dhcpv4.ToBytes sends.
	headerLen   = 236 + 4
	bootpMinLen = 300
)

// maxMessage returns the largest reply req's client takes, in bytes of
// DHCP message.
func maxMessage(req *dhcpv4.DHCPv4) int {
	limit := minDatagram
	if v := req.Options[dhcpv4.OptionMaximumDHCPMessageSize.Code()]; len(v) == 2 {
		limit = max(limit, int(binary.BigEndian.Uint16(v)))
	}
	return min(limit-ipUDPHeaders, maxReplyLen)
}

// droppable lists the options a reply can do without, least needed
// first, when it must shrink to the client's limit. The rest (message
// type, server identifier, lease time, subnet mask, the PXE options, the
// relay agent's option, a NAK's message) stay whatever the size.
var droppable = []uint8{
	dhcpv4.OptionLogServer.Code(),          // our own log address, a courtesy
	dhcpv4.OptionBroadcastAddress.Code(),   // derived from the mask
	dhcpv4.OptionHostName.Code(),           // the board's name
	dhcpv4.OptionRenewTimeValue.Code(),     // T1 defaults to half the lease
	dhcpv4.OptionRebindingTimeValue.Code(), // T2 to seven eighths
	optIPXEEncap,                           // only saves iPXE a wait
	dhcpv4.OptionTFTPServerName.Code(),     // siaddr carries it
	dhcpv4.OptionBootfileName.Code(),       // when the file field carries it
	dhcpv4.OptionDomainNameServer.Code(),
	dhcpv4.OptionRouter.Code(),
	optPathPrefix, // PXELINUX then uses its own directory
	optPXELinuxConfig,
}

// fitReply shrinks resp to what req's client takes: it drops the
// options in droppable that the client didn't ask for (option 55), then
// those it did, least needed first, until the reply fits. A reply that
// still doesn't fit goes out as it is, with a warning: some clients take
// more than they say.
func fitReply(log *slog.Logger, req, resp *dhcpv4.DHCPv4) {
	limit := maxMessage(req)
	size := wireSize(resp)
	if size <= limit {
		return
	}
	was := size
	var dropped []int // option codes; a []uint8 would log as a string
	for _, wanted := range []bool{false, true} {
		for _, code := range droppable {
			if size <= limit {
				break
			}
			v, ok := resp.Options[code]
			if !ok || requested(req, code) != wanted {
				continue
			}
			if code == dhcpv4.OptionBootfileName.Code() && resp.BootFileName != string(v) {
				continue // the only copy of a long boot file name
			}
			delete(resp.Options, code)
			dropped = append(dropped, int(code))
			size = wireSize(resp)
		}
	}
	if size > limit {
		log.Warn("reply larger than the client takes; sending it anyway",
			"bytes", size, "max", limit, "dropped", dropped)
		return
	}
	log.Warn("reply shrunk to the client's maximum message size",
		"bytes", was, "max", limit, "dropped", dropped)
}

// wireSize is len(resp.ToBytes()), without building the packet: the
// fixed fields and magic cookie, each option (split into pieces of up to
// 255 bytes, RFC 3396), the End option, and the padding up to BOOTP's
// 300 bytes.
func wireSize(resp *dhcpv4.DHCPv4) int {
	n := headerLen
	for code, v := range resp.Options {
		if code == dhcpv4.OptionEnd.Code() || code == dhcpv4.OptionPad.Code() {
			continue
		}
		pieces := max(1, (len(v)+254)/255)
		n += 2*pieces + len(v)
	}
	return max(n+1, bootpMinLen)
}

// marshal serialises resp as resp.ToBytes does, but with its options in
// the order RFC 2132 section 9.8 asks a server to try: the message type
// and server identifier first (where simple clients look), then those the
// client listed in its parameter request list prl, in its order, then the
// rest by code, and the relay agent's option last (RFC 3046 section 2.1).
func marshal(resp *dhcpv4.DHCPv4, prl []byte) []byte {
	head := *resp
	head.Options = nil
	b := head.ToBytes()[:headerLen]
	put := func(code uint8) {
		v, ok := resp.Options[code]
		if !ok {
			return
		}
		// As ToBytes: an empty option is still sent, and one over
		// 255 bytes is split into pieces (RFC 3396).
		for first := true; first || len(v) > 0; first = false {
			n := min(len(v), 255)
			b = append(b, code, byte(n))
			b = append(b, v[:n]...)
			v = v[n:]
		}
	}
	const relay = 82
	var done [256]bool // arrays, not maps: this is every reply's path
	done[dhcpv4.OptionEnd.Code()], done[dhcpv4.OptionPad.Code()], done[relay] = true, true, true
	for _, list := range [][]byte{{dhcpv4.OptionDHCPMessageType.Code(), dhcpv4.OptionServerIdentifier.Code()}, prl} {
		for _, code := range list {
			if !done[code] {
				done[code] = true
				put(code)
			}
		}
	}
	var rest [256]bool
	for code := range resp.Options {
		rest[code] = !done[code]
	}
	for code, ok := range rest {
		if ok {
			put(uint8(code))
		}
	}
	put(relay)
	b = append(b, dhcpv4.OptionEnd.Code())
	for len(b) < bootpMinLen {
		b = append(b, dhcpv4.OptionPad.Code())
	}
	return b
}
