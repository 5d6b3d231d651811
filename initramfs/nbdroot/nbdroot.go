// Package nbdroot attaches the board's root export to the kernel's NBD
// driver and mounts it: dial the appliance, negotiate the export with
// NBD_OPT_GO, hand the socket to the kernel over netlink
// ([github.com/rackboot/rackboot/nbd/kernel]) and mount /dev/nbdN. The
// export is the board's copy-on-write session, so it is mounted
// read-write.
package nbdroot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rackboot/rackboot/nbd"
	"github.com/rackboot/rackboot/nbd/kernel"
	"golang.org/x/sys/unix"
)

// Defaults for Options' zero fields.
const (
	// DefaultDialTimeout bounds connecting and negotiating, retries
	// included.
	DefaultDialTimeout = 15 * time.Second
	// DefaultDeadConnTimeout is how long the kernel holds I/O when the
	// connection dies, waiting for a reconnect (nbd/kernel.Reconfigure,
	// which rackboot-agent does) before failing it: long enough for an
	// appliance restart.
	DefaultDeadConnTimeout = 120 * time.Second
	// DefaultRequeueInterval is the block layer's request timeout on the
	// device (/sys/block/nbdN/queue/io_timeout) when ReqTimeout is zero.
	// At each expiry the driver resends a request that was in flight on a
	// socket that has since been replaced, so it bounds how long such a
	// request waits after a reconnect; a request that is merely slow is
	// left alone (and logged as a possible stuck request).
	DefaultRequeueInterval = 5 * time.Second
	// DefaultMountTimeout bounds the root's mount: a few seconds at
	// most on a working appliance, even a busy one under emulation.
	DefaultMountTimeout = 2 * time.Minute
	// UserTimeout is the sockets' TCP_USER_TIMEOUT: data the server doesn't
	// acknowledge for that long (it vanished without closing the
	// connection) kills the connection, which the driver then reports as
	// a dead link.
	UserTimeout   = 30 * time.Second
	DefaultFSType = "ext4"
)

// Options describe the root.
type Options struct {
	// Addr is the NBD server's address and Export the export's name,
	// which is the boot's token: no error names it, as errors are
	// reported to the appliance.
	Addr, Export string
	// Target is where to mount the root.
	Target string
	// FSType defaults to DefaultFSType; MountData is passed to mount(2).
	FSType, MountData string
	// Index is the NBD device (default 0, /dev/nbd0); kernel.AnyIndex for
	// the first free one.
	Index                        int
	DialTimeout, DeadConnTimeout time.Duration
	// ReqTimeout, if set, is the driver's per-request timeout
	// (NBD_ATTR_TIMEOUT): a request slower than that kills the connection
	// and is resent on the next one. Zero (the default) leaves slow
	// requests alone: dead connections are found by TCP (the server closed
	// it, UserTimeout, keepalive), and RequeueInterval bounds the wait of
	// in-flight requests after a reconnect.
	ReqTimeout time.Duration
	// RequeueInterval defaults to DefaultRequeueInterval; it applies when
	// ReqTimeout is zero.
	RequeueInterval time.Duration
	// MountTimeout bounds the mount of the root; zero means
	// DefaultMountTimeout.
	MountTimeout time.Duration
}

// Root is the attached and mounted root.
type Root struct {
	Device  string // /dev/nbdN
	Index   int
	Details nbd.ExportDetails
}

// Attach dials, negotiates, attaches and mounts.
func Attach(ctx context.Context, o Options) (Root, error) {
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.DeadConnTimeout <= 0 {
		o.DeadConnTimeout = DefaultDeadConnTimeout
	}
	if o.RequeueInterval <= 0 {
		o.RequeueInterval = DefaultRequeueInterval
	}
	if o.MountTimeout <= 0 {
		o.MountTimeout = DefaultMountTimeout
	}
	if o.FSType == "" {
		o.FSType = DefaultFSType
	}
	conn, d, err := dial(ctx, o)
	if err != nil {
		return Root{}, err
	}
	defer conn.Close() // the kernel holds its own reference
	if d.Size <= 0 {
		return Root{}, fmt.Errorf("export has size %d", d.Size)
	}
	cfg := kernel.Config{
		Index:           o.Index,
		Size:            uint64(d.Size),
		BlockSize:       kernel.BlockSize(d.MinBlock),
		ServerFlags:     d.Flags,
		Timeout:         o.ReqTimeout,
		DeadConnTimeout: o.DeadConnTimeout,
	}
	idx, err := kernel.Connect(ctx, cfg, conn)
	if err != nil {
		return Root{}, fmt.Errorf("attaching export: %w", err)
	}
	r := Root{Device: "/dev/nbd" + strconv.Itoa(idx), Index: idx, Details: d}
	if err := waitSize(ctx, idx); err != nil {
		return r, err
	}
	if o.ReqTimeout <= 0 {
		// Without io_timeout (kernels before 5.0) the block layer's
		// default of 30 s applies: the root works, reconnects stall
		// longer.
		p := filepath.Join("/sys/block", "nbd"+strconv.Itoa(idx), "queue/io_timeout")
		os.WriteFile(p, []byte(strconv.FormatInt(o.RequeueInterval.Milliseconds(), 10)), 0o644)
	}
	if err := os.MkdirAll(o.Target, 0o755); err != nil {
		return r, err
	}
	var flags uintptr
	if d.Flags&nbd.FlagReadOnly != 0 {
		flags |= unix.MS_RDONLY
	}
	err = within(ctx, o.MountTimeout, func() error { return unix.Mount(r.Device, o.Target, o.FSType, flags, o.MountData) })
	if err != nil {
		return r, fmt.Errorf("mounting %s (%s) on %s: %w", r.Device, o.FSType, o.Target, err)
	}
	return r, nil
}

// within runs f and returns its error, or gives up on it after timeout
// (or when ctx is done), leaving it blocked. Requests to an appliance that
// keeps the connection open but stops answering wait for ever, and so
// would a mount in PID 1: giving up lets the boot report it and reboot.
func within(ctx context.Context, timeout time.Duration, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("no answer from the NBD server in %v", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dial connects and negotiates, retrying until DialTimeout: the appliance
// may be restarting, or ARP still settling.
func dial(ctx context.Context, o Options) (*net.TCPConn, nbd.ExportDetails, error) {
	ctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	var last error
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		conn, det, err := Dial(ctx, o.Addr, o.Export)
		if err == nil {
			return conn, det, nil
		}
		var ne *nbd.Error
		if errors.As(err, &ne) {
			// The server refused the export: retrying won't help.
			return nil, nbd.ExportDetails{}, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, nbd.ExportDetails{}, fmt.Errorf("NBD server %s: %w", o.Addr, last)
		case <-time.After(wait):
		}
	}
}

// TCP keepalive of the sockets Dial makes, which they keep once the kernel
// owns them: an idle connection to a server that vanished without closing
// it (a power cut, a pulled cable) is found dead after about
// KeepAliveIdle + KeepAliveCount*KeepAliveInterval, and the driver then
// reports the dead link (nbd/kernel.Monitor), so that it can be replaced
// before the next I/O has to wait for it.
const (
	KeepAliveIdle     = 10 * time.Second
	KeepAliveInterval = 5 * time.Second
	KeepAliveCount    = 3
)

// Dial connects to the NBD server at addr (HOST:PORT) once and negotiates
// export, leaving the socket in the transmission phase for
// nbd/kernel.Connect or Reconfigure. ctx bounds both. A refusal of the
// export by the server wraps an *nbd.Error.
func Dial(ctx context.Context, addr, export string) (*net.TCPConn, nbd.ExportDetails, error) {
	d := net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{
			Enable: true, Idle: KeepAliveIdle, Interval: KeepAliveInterval, Count: KeepAliveCount,
		},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(UserTimeout.Milliseconds()))
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nbd.ExportDetails{}, err
	}
	det, err := nbd.Handshake(ctx, conn, export)
	if err != nil {
		conn.Close()
		return nil, nbd.ExportDetails{}, fmt.Errorf("NBD export at %s: %w", addr, err)
	}
	return conn.(*net.TCPConn), det, nil
}

// waitSize waits until the kernel shows the device's size in sysfs, which
// it sets when the connection starts.
func waitSize(ctx context.Context, idx int) error {
	p := filepath.Join("/sys/block", "nbd"+strconv.Itoa(idx), "size")
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) != "0" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nbd%d has no size after connecting", idx)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
