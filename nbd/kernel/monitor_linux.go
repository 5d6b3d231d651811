package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ErrMissed is returned by [Monitor.Next] when the kernel dropped
// notifications because they were not read fast enough (ENOBUFS on the
// netlink socket): a link may have died unseen, so check the devices
// another way before waiting again.
var ErrMissed = errors.New("nbd link notifications were lost")

// Monitor receives the driver's NBD_CMD_LINK_DEAD notifications, which it
// multicasts on the "nbd" family's group "nbd_mc_group" when a device's
// socket dies while the device stays configured: the server closed the
// connection or reset it, a send failed, a request timed out, or TCP
// keepalive gave up. The device's requests then wait up to its
// DeadConnTimeout for a [Reconfigure].
//
// A Monitor is not safe for concurrent calls to Next; Close may be called
// at any time.
type Monitor struct {
	f      *os.File
	family uint16
	buf    []byte
	queue  []int
}

// NewMonitor subscribes to the driver's notifications. It needs the nbd
// module loaded ([ErrNoDriver] otherwise); no privilege is needed.
func NewMonitor() (*Monitor, error) {
	family, group, err := resolveFamily()
	if err != nil {
		return nil, err
	}
	if group == 0 {
		return nil, fmt.Errorf("nbd driver has no multicast group %q", mcastGroup)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("opening generic netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding generic netlink socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(group)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("joining netlink group %q (%d): %w", mcastGroup, group, err)
	}
	// A non-blocking descriptor goes to the runtime's poller, so reads
	// honour deadlines and Close interrupts them.
	return &Monitor{f: os.NewFile(uintptr(fd), "nbd-netlink"), family: family, buf: make([]byte, 8192)}, nil
}

// Next waits for a dead link and returns the device's index. It returns
// ErrMissed (see there), ctx.Err() when ctx is done, and an error wrapping
// os.ErrClosed after Close.
func (m *Monitor) Next(ctx context.Context) (int, error) {
	for len(m.queue) == 0 {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		m.f.SetReadDeadline(time.Time{})
		stop := context.AfterFunc(ctx, func() { m.f.SetReadDeadline(time.Unix(1, 0)) })
		n, err := m.f.Read(m.buf)
		stop()
		if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if errors.Is(err, syscall.ENOBUFS) {
			return 0, ErrMissed
		}
		if err != nil {
			return 0, fmt.Errorf("reading nbd notifications: %w", err)
		}
		m.queue, err = parseLinkDead(m.buf[:n], m.family)
		if err != nil {
			return 0, err
		}
	}
	idx := m.queue[0]
	m.queue = m.queue[1:]
	return idx, nil
}

// Close unsubscribes and interrupts a waiting Next.
func (m *Monitor) Close() error { return m.f.Close() }

// parseLinkDead returns the device indexes of the NBD_CMD_LINK_DEAD
// messages of family in a netlink datagram, ignoring other messages.
func parseLinkDead(b []byte, family uint16) ([]int, error) {
	var out []int
	for len(b) >= unix.SizeofNlMsghdr {
		n := int(nl.NativeEndian().Uint32(b))
		typ := nl.NativeEndian().Uint16(b[4:])
		if n < unix.SizeofNlMsghdr || n > len(b) {
			return out, fmt.Errorf("netlink message of length %d in %d bytes", n, len(b))
		}
		body := b[unix.SizeofNlMsghdr:n]
		if n = (n + 3) &^ 3; n > len(b) {
			n = len(b)
		}
		b = b[n:]
		if typ != family || len(body) < nl.SizeofGenlmsg || body[0] != cmdLinkDead {
			continue
		}
		attrs, err := parseGenl(body)
		if err != nil {
			return out, err
		}
		for _, a := range attrs {
			if a.typ == attrIndex && len(a.value) >= 4 {
				out = append(out, int(nl.NativeEndian().Uint32(a.value)))
			}
		}
	}
	return out, nil
}
