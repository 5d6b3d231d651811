package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Conflict check: before it offers a pool address, the server asks the
// segment whether a host already uses it, with an ARP probe as RFC 5227
// has hosts do before they use an address (sender address 0.0.0.0, so
// that no host's ARP cache learns anything from it). Any ARP packet sent
// from the address answers: a host's reply, or its own probe or
// announcement.

const (
	etherTypeARP = 0x0806
	arpLen       = 28 // Ethernet and IPv4: 8 bytes of header, 2×(6+4) of addresses
	arpRequest   = 1
	arpReply     = 2
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// appendARPProbe appends an ARP request from hw, with sender address
// 0.0.0.0, for target.
func appendARPProbe(b []byte, hw net.HardwareAddr, target netip.Addr) []byte {
	b = binary.BigEndian.AppendUint16(b, 1) // Ethernet
	b = binary.BigEndian.AppendUint16(b, etherTypeIPv4)
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, arpRequest)
	b = append(b, hw[:6]...)
	b = append(b, 0, 0, 0, 0)
	b = append(b, 0, 0, 0, 0, 0, 0)
	t := target.As4()
	return append(b, t[:]...)
}

// arpPacket is the part of an ARP packet the check reads: who sent it.
type arpPacket struct {
	senderHW net.HardwareAddr
	senderIP netip.Addr // 0.0.0.0 in a probe
}

// parseARP parses an Ethernet/IPv4 ARP request or reply (as a packet
// socket of SOCK_DGRAM type hands it over, without the Ethernet header).
func parseARP(b []byte) (arpPacket, bool) {
	if len(b) < arpLen || binary.BigEndian.Uint16(b[0:]) != 1 ||
		binary.BigEndian.Uint16(b[2:]) != etherTypeIPv4 || b[4] != 6 || b[5] != 4 {
		return arpPacket{}, false
	}
	if op := binary.BigEndian.Uint16(b[6:]); op != arpRequest && op != arpReply {
		return arpPacket{}, false
	}
	return arpPacket{
		senderHW: net.HardwareAddr(bytes.Clone(b[8:14])),
		senderIP: netip.AddrFrom4([4]byte(b[14:18])),
	}, true
}

// arpChecker runs conflict checks over one packet socket, opened up
// front (a server in a network namespace opens its sockets there before
// it serves): a reader hands each ARP packet to the checks waiting for
// its sender address.
type arpChecker struct {
	c    *rawConn
	hw   net.HardwareAddr
	wait time.Duration
	done chan struct{} // closed when the reader has stopped

	mu      sync.Mutex
	waiting map[netip.Addr][]chan net.HardwareAddr
}

// newARPChecker opens the socket on ifi and starts the reader; Close
// stops it.
func newARPChecker(ifi *net.Interface, wait time.Duration) (*arpChecker, error) {
	if len(ifi.HardwareAddr) != 6 {
		return nil, errors.New("the interface has no Ethernet address")
	}
	c, err := openRaw(ifi.Index, etherTypeARP, true)
	if err != nil {
		return nil, err
	}
	a := &arpChecker{c: c, hw: ifi.HardwareAddr, wait: wait, done: make(chan struct{}), waiting: map[netip.Addr][]chan net.HardwareAddr{}}
	go a.read()
	return a, nil
}

// Close stops the checker; checks under way end as if nobody answered.
func (a *arpChecker) Close() error {
	err := a.c.Close()
	<-a.done
	return err
}

func (a *arpChecker) read() {
	defer close(a.done)
	buf := make([]byte, 128)
	for {
		n, _, err := a.c.readFrom(buf, time.Time{})
		if err != nil {
			return // closed
		}
		p, ok := parseARP(buf[:n])
		if !ok || p.senderIP.IsUnspecified() {
			continue
		}
		a.mu.Lock()
		for _, ch := range a.waiting[p.senderIP] {
			select {
			case ch <- p.senderHW:
			default: // that check has its answer already
			}
		}
		a.mu.Unlock()
	}
}

// check broadcasts a probe for ip and returns the hardware address of
// the first host that sends an ARP packet from ip within the wait, or nil
// if none did.
func (a *arpChecker) check(ctx context.Context, ip netip.Addr) (net.HardwareAddr, error) {
	ch := make(chan net.HardwareAddr, 1)
	a.mu.Lock()
	a.waiting[ip] = append(a.waiting[ip], ch)
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		rest := slices.DeleteFunc(a.waiting[ip], func(c chan net.HardwareAddr) bool { return c == ch })
		if len(rest) == 0 {
			delete(a.waiting, ip)
		} else {
			a.waiting[ip] = rest
		}
	}()
	timer := time.NewTimer(a.wait)
	defer timer.Stop()
	if err := a.c.writeTo(appendARPProbe(nil, a.hw, ip), broadcastMAC, time.Now().Add(a.wait)); err != nil {
		return nil, fmt.Errorf("sending ARP probe for %s: %w", ip, err)
	}
	select {
	case hw := <-ch:
		return hw, nil
	case <-timer.C:
		return nil, nil
	case <-a.done:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
