package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

// Timing of the load generator's exchanges.
const (
	// dhcpTimeout is how long a client waits for an OFFER or ACK before
	// it sends its DISCOVER or REQUEST again.
	dhcpTimeout = time.Second
	// dhcpAttempts is how often a client sends each message before it
	// gives up on the handshake.
	dhcpAttempts = 4
	// recvPoll bounds each blocking read, so that close is noticed.
	recvPoll = 100 * time.Millisecond
)

// pxeVendorClass is option 60 of a BIOS PXE ROM (RFC 4578, PXE 2.1).
const pxeVendorClass = "PXEClient:Arch:00000:UNDI:002001"

// dhcpLoad is a DHCP load generator: many simulated clients, each with
// its own hardware address, on one raw packet socket in the client
// namespace. Replies are matched to clients by transaction ID. It is safe
// for concurrent use.
type dhcpLoad struct {
	fd      int
	ifindex int

	mu      sync.Mutex
	waiting map[uint32]chan *dhcpv4.DHCPv4 // by xid

	retransmits atomic.Int64
	closed      atomic.Bool
	recvDone    chan struct{}
}

// openDHCPLoad opens the generator's socket on interface ifname of ns. The
// socket sees every IPv4 frame on the interface (promiscuous, so layer 2
// unicasts to the simulated clients arrive too) except its own.
func openDHCPLoad(ns *netNS, ifname string) (*dhcpLoad, error) {
	l := &dhcpLoad{fd: -1, waiting: map[uint32]chan *dhcpv4.DHCPv4{}, recvDone: make(chan struct{})}
	proto := int(htons(unix.ETH_P_IP))
	err := ns.do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		l.ifindex = ifi.Index
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("opening a packet socket: %w", err)
		}
		l.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("binding the packet socket: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			return fmt.Errorf("setting PACKET_IGNORE_OUTGOING: %w", err)
		}
		mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return fmt.Errorf("setting promiscuous mode: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
			return fmt.Errorf("setting the receive buffer: %w", err)
		}
		tv := unix.NsecToTimeval(recvPoll.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("setting the receive timeout: %w", err)
		}
		return nil
	})
	if err != nil {
		if l.fd >= 0 {
			unix.Close(l.fd)
		}
		return nil, fmt.Errorf("opening the DHCP load generator: %w", err)
	}
	go l.recvLoop()
	return l, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// close stops the receiver and closes the socket.
func (l *dhcpLoad) close() {
	if l.closed.Swap(true) {
		return
	}
	<-l.recvDone
	unix.Close(l.fd)
}

func (l *dhcpLoad) recvLoop() {
	defer close(l.recvDone)
	buf := make([]byte, 1<<16)
	for !l.closed.Load() {
		n, _, err := unix.Recvfrom(l.fd, buf, 0)
		if err != nil {
			continue // EAGAIN at the poll timeout, EINTR
		}
		_, dst, payload, ok := parseUDPFrame(buf[:n])
		if !ok || dst.Port() != dhcpClientUDP {
			continue
		}
		msg, err := dhcpv4.FromBytes(payload)
		if err != nil || msg.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		l.mu.Lock()
		ch := l.waiting[binary.BigEndian.Uint32(msg.TransactionID[:])]
		l.mu.Unlock()
		if ch != nil {
			select {
			case ch <- msg:
			default: // a duplicate while the client is busy: drop it
			}
		}
	}
}

// client is one simulated DHCP client.
type client struct {
	mac  net.HardwareAddr
	xid  uint32
	uuid []byte // option 97: type 0 and a 16-byte UUID
}

// newClient returns simulated client i of a run whose clients share seed.
func newClient(seed uint32, i int) client {
	mac := net.HardwareAddr{0x02, byte(seed), byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
	uuid := make([]byte, 17)
	binary.BigEndian.PutUint32(uuid[1:], seed)
	copy(uuid[11:], mac)
	return client{mac: mac, xid: seed<<16 ^ uint32(i), uuid: uuid}
}

// message builds one of the client's packets, as a PXE ROM would send it:
// broadcast flag set, PXE options, from 0.0.0.0.
func (c client) message(t dhcpv4.MessageType, extra ...dhcpv4.Modifier) []byte {
	var xid dhcpv4.TransactionID
	binary.BigEndian.PutUint32(xid[:], c.xid)
	mods := []dhcpv4.Modifier{
		dhcpv4.WithTransactionID(xid),
		dhcpv4.WithHwAddr(c.mac),
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithMessageType(t),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
			dhcpv4.OptionDomainName, dhcpv4.OptionTFTPServerName, dhcpv4.OptionBootfileName),
		dhcpv4.WithGeneric(dhcpv4.OptionMaximumDHCPMessageSize, []byte{0x05, 0xc0}), // 1472
		dhcpv4.WithGeneric(dhcpv4.OptionClassIdentifier, []byte(pxeVendorClass)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 0}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, c.uuid),
	}
	m, err := dhcpv4.New(append(mods, extra...)...)
	if err != nil {
		panic(err) // only fails if the system's random source does
	}
	src := netip.AddrPortFrom(netip.IPv4Unspecified(), dhcpClientUDP)
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), dhcpServerUDP)
	return udpFrame(broadcastMAC, c.mac, src, dst, m.ToBytes())
}

func (l *dhcpLoad) send(frame []byte) error {
	return unix.Sendto(l.fd, frame, 0, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: l.ifindex})
}

// exchange sends frame until a reply of type want (or a NAK) arrives for
// the client, up to attempts times, timeout apart.
func (l *dhcpLoad) exchange(ctx context.Context, c client, frame []byte, want dhcpv4.MessageType, attempts int, timeout time.Duration) (*dhcpv4.DHCPv4, error) {
	ch := make(chan *dhcpv4.DHCPv4, 4)
	l.mu.Lock()
	l.waiting[c.xid] = ch
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.waiting, c.xid)
		l.mu.Unlock()
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			l.retransmits.Add(1)
		}
		if err := l.send(frame); err != nil {
			return nil, fmt.Errorf("sending: %w", err)
		}
		timer.Reset(timeout)
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-timer.C:
				break wait
			case m := <-ch:
				if !bytes.Equal(m.ClientHWAddr, c.mac) {
					continue
				}
				switch m.MessageType() {
				case want:
					return m, nil
				case dhcpv4.MessageTypeNak:
					return nil, fmt.Errorf("got a NAK: %s", m.Message())
				}
			}
		}
		if attempt == attempts {
			return nil, fmt.Errorf("no %s after %d attempts %v apart", want, attempts, timeout)
		}
	}
}

// handshake runs one client's DISCOVER, OFFER, REQUEST, ACK.
func (l *dhcpLoad) handshake(ctx context.Context, c client) error {
	offer, err := l.exchange(ctx, c, c.message(dhcpv4.MessageTypeDiscover), dhcpv4.MessageTypeOffer, dhcpAttempts, dhcpTimeout)
	if err != nil {
		return fmt.Errorf("client %s: DISCOVER: %w", c.mac, err)
	}
	yiaddr := offer.YourIPAddr.To4()
	sid := offer.ServerIdentifier()
	if yiaddr == nil || yiaddr.IsUnspecified() || sid == nil {
		return fmt.Errorf("client %s: OFFER without an address (%v) or server identifier (%v)", c.mac, offer.YourIPAddr, sid)
	}
	req := c.message(dhcpv4.MessageTypeRequest,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(yiaddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(sid)))
	ack, err := l.exchange(ctx, c, req, dhcpv4.MessageTypeAck, dhcpAttempts, dhcpTimeout)
	if err != nil {
		return fmt.Errorf("client %s: REQUEST %s: %w", c.mac, yiaddr, err)
	}
	if !ack.YourIPAddr.Equal(yiaddr) {
		return fmt.Errorf("client %s: ACK for %v, requested %v", c.mac, ack.YourIPAddr, yiaddr)
	}
	return nil
}

// probe sends one DISCOVER from a client outside any run and waits
// briefly for an OFFER: the readiness check of a DHCP server.
func (l *dhcpLoad) probe(ctx context.Context) error {
	c := newClient(0xffff, 0xffffff)
	_, err := l.exchange(ctx, c, c.message(dhcpv4.MessageTypeDiscover), dhcpv4.MessageTypeOffer, 1, 250*time.Millisecond)
	return err
}

// dhcpRun is the outcome of one measurement.
type dhcpRun struct {
	done, failed int
	elapsed      time.Duration
	retransmits  int64
	firstErr     error
}

// rate returns completed handshakes per second.
func (r dhcpRun) rate() float64 { return float64(r.done) / r.elapsed.Seconds() }

// run performs n handshakes from n distinct clients, with at most
// outstanding in flight, and times them from the first DISCOVER to the
// last ACK.
func (l *dhcpLoad) run(ctx context.Context, n, outstanding int) dhcpRun {
	seed := rand.Uint32()
	var next, done, failed atomic.Int64
	var errOnce sync.Once
	var firstErr error
	before := l.retransmits.Load()
	var wg sync.WaitGroup
	start := time.Now()
	for range outstanding {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := l.handshake(ctx, newClient(seed, i)); err != nil {
					if ctx.Err() != nil {
						return
					}
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	return dhcpRun{
		done:        int(done.Load()),
		failed:      int(failed.Load()),
		elapsed:     time.Since(start),
		retransmits: l.retransmits.Load() - before,
		firstErr:    firstErr,
	}
}
