package dhcp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// ForeignServerError is returned by [Server.Probe], and by
// [Server.ListenAndServe] in full mode, when another DHCP server answers
// on the interface.
type ForeignServerError struct {
	// Interface is where the probe ran.
	Interface string
	// ServerID is the other server's identifier (option 54), or the
	// offer's IP source address if it sent none.
	ServerID netip.Addr
	// MAC is the Ethernet source address of the offer: the other server,
	// or the relay agent in front of it.
	MAC net.HardwareAddr
	// Offered is the address it offered (yiaddr), possibly zero.
	Offered netip.Addr
}

// Error names the other server and says what to do about it.
func (e *ForeignServerError) Error() string {
	return fmt.Sprintf("another DHCP server answers on %s: server %s (MAC %s) offered %s; "+
		"full mode must be the only DHCP server on its network (use proxy mode there)",
		e.Interface, e.ServerID, e.MAC, e.Offered)
}

// Probe looks for other DHCP servers on Interface: it broadcasts a
// DHCPDISCOVER from the interface's hardware address (through a packet
// socket, so the interface needs no address), repeats it every
// ProbeInterval, and listens for ProbeTimeout. An offer from a server
// identifier other than ServerIP makes it return a *[ForeignServerError];
// no such offer, nil. It needs CAP_NET_RAW. It opens its socket in the
// calling goroutine, as ListenAndServe does.
func (s *Server) Probe(ctx context.Context) error {
	if s.Interface == "" {
		return errors.New("dhcp: Probe needs Server.Interface")
	}
	ifi, err := net.InterfaceByName(s.Interface)
	if err != nil {
		return fmt.Errorf("dhcp: %w", err)
	}
	return s.probe(ctx, ifi)
}

func (s *Server) probe(ctx context.Context, ifi *net.Interface) error {
	self := s.ServerIP.Unmap()
	if !self.IsValid() {
		s.startMu.Lock()
		self = s.ifaceIP
		s.startMu.Unlock()
	}
	if len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("dhcp: probing %s: not an Ethernet interface", ifi.Name)
	}
	rc, err := openRaw(ifi.Index, etherTypeIPv4, true)
	if err != nil {
		return fmt.Errorf("dhcp: probing %s for other DHCP servers: %w", ifi.Name, err)
	}
	defer rc.Close()

	var xid dhcpv4.TransactionID
	rand.Read(xid[:])
	discover := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        iana.HWTypeEthernet,
		TransactionID: xid,
		Flags:         0x8000, // broadcast: we have no address
		ClientHWAddr:  ifi.HardwareAddr,
		Options: dhcpv4.Options{
			dhcpv4.OptionDHCPMessageType.Code():      {byte(dhcpv4.MessageTypeDiscover)},
			dhcpv4.OptionParameterRequestList.Code(): {1, 3, 6, 54},
		},
	}
	frame := appendIPv4UDP(nil,
		netip.AddrPortFrom(netip.IPv4Unspecified(), ClientPort),
		netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), ServerPort),
		discover.ToBytes())
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

	log := s.logger().With("interface", ifi.Name)
	log.Info("probing for other DHCP servers")
	stop := context.AfterFunc(ctx, rc.wake)
	defer stop()
	end := time.Now().Add(orDefault(s.ProbeTimeout, DefaultProbeTimeout))
	nextSend := time.Now()
	buf := make([]byte, maxDatagram)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		now := time.Now()
		if !now.Before(end) {
			return nil
		}
		if !now.Before(nextSend) {
			if err := rc.writeTo(frame, bcast, now.Add(time.Second)); err != nil {
				return fmt.Errorf("dhcp: probing %s: sending DHCPDISCOVER: %w", ifi.Name, err)
			}
			nextSend = now.Add(ProbeInterval)
		}
		wait := nextSend
		if end.Before(wait) {
			wait = end
		}
		n, mac, err := rc.readFrom(buf, wait)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("dhcp: probing %s: %w", ifi.Name, err)
		}
		src, dst, payload, ok := parseIPv4UDP(buf[:n])
		if !ok || src.Port() != ServerPort || dst.Port() != ClientPort {
			continue
		}
		offer, err := dhcpv4.FromBytes(payload)
		if err != nil || offer.OpCode != dhcpv4.OpcodeBootReply || offer.TransactionID != xid {
			continue
		}
		id := optAddr(offer, dhcpv4.OptionServerIdentifier.Code())
		if !id.IsValid() {
			id = src.Addr()
		}
		if self.IsValid() && id == self {
			continue
		}
		return &ForeignServerError{Interface: ifi.Name, ServerID: id, MAC: mac, Offered: ipv4Of(offer.YourIPAddr)}
	}
}
