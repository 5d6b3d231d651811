//go:build linux

package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawConn is an AF_PACKET datagram socket bound to one interface: the
// kernel adds and strips the Ethernet header, we provide the IPv4 packet
// and the destination MAC. Reads and writes honour deadlines through the
// runtime poller. Safe for concurrent use.
type rawConn struct {
	f         *os.File
	rc        syscall.RawConn
	ifindex   int
	etherType uint16 // of the frames it sends, and receives if it does
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openRaw opens a packet socket on the interface with index ifindex for
// frames of etherType. receive selects whether it receives them too; a
// send-only socket binds protocol 0, so the kernel queues nothing for it.
func openRaw(ifindex int, etherType uint16, receive bool) (*rawConn, error) {
	var proto uint16
	if receive {
		proto = htons(etherType)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("opening packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding packet socket to interface %d: %w", ifindex, err)
	}
	f := os.NewFile(uintptr(fd), "packet")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &rawConn{f: f, rc: rc, ifindex: ifindex, etherType: etherType}, nil
}

func (c *rawConn) Close() error { return c.f.Close() }

// wake interrupts a blocked readFrom.
func (c *rawConn) wake() { c.f.SetReadDeadline(time.Now()) }

// writeTo sends a packet of the socket's EtherType to the hardware
// address dst.
func (c *rawConn) writeTo(pkt []byte, dst net.HardwareAddr, deadline time.Time) error {
	if len(dst) > 8 {
		return fmt.Errorf("hardware address %s too long for a packet socket", dst)
	}
	if err := c.f.SetWriteDeadline(deadline); err != nil {
		return err
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(c.etherType), Ifindex: c.ifindex, Halen: uint8(len(dst))}
	copy(sa.Addr[:], dst)
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), pkt, 0, sa)
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err != nil {
		return err
	}
	return serr
}

// readFrom reads one packet received on the interface (not one we sent)
// and returns its length and the sender's hardware address.
func (c *rawConn) readFrom(b []byte, deadline time.Time) (int, net.HardwareAddr, error) {
	if err := c.f.SetReadDeadline(deadline); err != nil {
		return 0, nil, err
	}
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := c.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), b, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return 0, nil, err
		}
		if rerr != nil {
			return 0, nil, rerr
		}
		sll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || sll.Pkttype == unix.PACKET_OUTGOING || int(sll.Halen) > len(sll.Addr) {
			continue
		}
		return n, append(net.HardwareAddr(nil), sll.Addr[:sll.Halen]...), nil
	}
}

// listenUDP opens a UDP socket on port bound to the interface iface
// (SO_BINDTODEVICE, so it sees broadcasts arriving there and nothing
// else) with broadcasting allowed. It sets neither SO_REUSEADDR nor
// SO_REUSEPORT: a second DHCP server bound to the same port without a
// device, or to the same device, makes this fail instead of silently
// sharing the traffic.
func listenUDP(ctx context.Context, iface string, port int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		if err := bindToDevice(iface)(network, address, c); err != nil {
			return err
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// enableBroadcast sets SO_BROADCAST on conn if it is a socket, so that a
// caller-supplied conn can send to 255.255.255.255.
func enableBroadcast(conn net.PacketConn) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
	})
}

// queuedFunc returns a function that reports whether a datagram is
// waiting to be read on conn (SIOCINQ), or true if it can't tell.
func queuedFunc(conn net.PacketConn) func() bool {
	always := func() bool { return true }
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return always
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return always
	}
	// One reader at a time calls it: the call's state is kept, so that
	// asking costs no allocation.
	q := &inq{rc: rc}
	q.ioctl = func(fd uintptr) {
		// A raw call: the ioctl never blocks, and the scheduler's
		// system-call path costs more than it does.
		_, _, q.errno = unix.RawSyscall(unix.SYS_IOCTL, fd, unix.SIOCINQ, uintptr(unsafe.Pointer(&q.n)))
	}
	return q.queued
}

// inq asks a socket how many bytes wait to be read (for UDP: the size of
// the first datagram).
type inq struct {
	rc    syscall.RawConn
	ioctl func(fd uintptr)
	n     int32 // SIOCINQ's int
	errno syscall.Errno
}

func (q *inq) queued() bool {
	if err := q.rc.Control(q.ioctl); err != nil || q.errno != 0 {
		return true
	}
	return q.n > 0
}

// bindToDevice returns a net.ListenConfig Control function that binds
// the socket to iface (SO_BINDTODEVICE) before it is bound to an address;
// empty iface: no binding.
func bindToDevice(iface string) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		if iface == "" {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, iface)
		})
		if err := errors.Join(err, serr); err != nil {
			return fmt.Errorf("binding to interface %s: %w", iface, err)
		}
		return nil
	}
}
