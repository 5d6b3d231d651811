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
	// connection dies, waiting for a reconnect (nbd/kernel.Reconfigure)
	// before failing it: long enough for an appliance restart.
	DefaultDeadConnTimeout = 120 * time.Second
	// DefaultRequestTimeout is the kernel's per-request timeout.
	DefaultRequestTimeout = 60 * time.Second
	DefaultFSType         = "ext4"
)

// Options describe the root.
type Options struct {
	Addr, Export string
	// Target is where to mount the root.
	Target string
	// FSType defaults to DefaultFSType; MountData is passed to mount(2).
	FSType, MountData string
	// Index is the NBD device (default 0, /dev/nbd0); kernel.AnyIndex for
	// the first free one.
	Index                                    int
	DialTimeout, DeadConnTimeout, ReqTimeout time.Duration
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
	if o.ReqTimeout <= 0 {
		o.ReqTimeout = DefaultRequestTimeout
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
		return Root{}, fmt.Errorf("export %q has size %d", o.Export, d.Size)
	}
	cfg := kernel.Config{
		Index:           o.Index,
		Size:            uint64(d.Size),
		BlockSize:       kernel.BlockSize(d.MinBlock),
		ServerFlags:     d.Flags,
		Timeout:         o.ReqTimeout,
		DeadConnTimeout: o.DeadConnTimeout,
	}
	idx, err := kernel.Connect(ctx, cfg, conn.(*net.TCPConn))
	if err != nil {
		return Root{}, fmt.Errorf("attaching export %q: %w", o.Export, err)
	}
	r := Root{Device: "/dev/nbd" + strconv.Itoa(idx), Index: idx, Details: d}
	if err := waitSize(ctx, idx); err != nil {
		return r, err
	}
	if err := os.MkdirAll(o.Target, 0o755); err != nil {
		return r, err
	}
	var flags uintptr
	if d.Flags&nbd.FlagReadOnly != 0 {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(r.Device, o.Target, o.FSType, flags, o.MountData); err != nil {
		return r, fmt.Errorf("mounting %s (%s) on %s: %w", r.Device, o.FSType, o.Target, err)
	}
	return r, nil
}

// dial connects and negotiates, retrying until DialTimeout: the appliance
// may be restarting, or ARP still settling.
func dial(ctx context.Context, o Options) (net.Conn, nbd.ExportDetails, error) {
	ctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	var last error
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", o.Addr)
		if err == nil {
			var det nbd.ExportDetails
			det, err = nbd.Handshake(ctx, conn, o.Export)
			if err == nil {
				return conn, det, nil
			}
			conn.Close()
			var ne *nbd.Error
			if errors.As(err, &ne) {
				// The server refused the export: retrying won't help.
				return nil, nbd.ExportDetails{}, fmt.Errorf("NBD export %q at %s: %w", o.Export, o.Addr, err)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, nbd.ExportDetails{}, fmt.Errorf("NBD server %s: %w", o.Addr, last)
		case <-time.After(wait):
		}
	}
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
