//go:build !linux

package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// rawConn needs Linux packet sockets; elsewhere the server broadcasts
// instead of unicasting at layer 2, and the probe is unavailable.
type rawConn struct{}

var errNoRaw = errors.New("packet sockets are only supported on Linux")

func openRaw(int, uint16, bool) (*rawConn, error)                          { return nil, errNoRaw }
func (*rawConn) Close() error                                              { return nil }
func (*rawConn) wake()                                                     {}
func (*rawConn) writeTo([]byte, net.HardwareAddr, time.Time) error         { return errNoRaw }
func (*rawConn) readFrom([]byte, time.Time) (int, net.HardwareAddr, error) { return 0, nil, errNoRaw }

func listenUDP(ctx context.Context, iface string, port int) (*net.UDPConn, error) {
	if iface != "" {
		return nil, errors.New("binding to an interface is only supported on Linux")
	}
	lc := net.ListenConfig{}
	pc, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func enableBroadcast(net.PacketConn) {}

// queuedFunc can't tell whether datagrams are queued: it always says so.
func queuedFunc(net.PacketConn) func() bool { return func() bool { return true } }

func bindToDevice(iface string) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error {
		if iface != "" {
			return errors.New("binding to an interface is only supported on Linux")
		}
		return nil
	}
}
