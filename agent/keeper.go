package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/rackboot/rackboot/initramfs/nbdroot"
	"github.com/rackboot/rackboot/nbd"
	"github.com/rackboot/rackboot/nbd/kernel"
)

// Defaults for Keeper's zero fields.
const (
	// DefaultPollInterval is how often the Keeper looks for the root's
	// connection in the TCP table, in case a notification was missed.
	DefaultPollInterval = 5 * time.Second
	// DefaultDialTimeout bounds one attempt to connect and negotiate.
	DefaultDialTimeout = 5 * time.Second
	// DefaultMaxBackoff caps the wait between attempts: far below the
	// kernel's dead-connection timeout (nbdroot.DefaultDeadConnTimeout), so
	// that an appliance that comes back is found within a second.
	DefaultMaxBackoff = 500 * time.Millisecond
	// minBackoff is the first wait between attempts.
	minBackoff = 50 * time.Millisecond
)

// LinkWatcher delivers the driver's dead-link notifications;
// *kernel.Monitor implements it.
type LinkWatcher interface {
	// Next blocks until a device's link dies and returns its index;
	// kernel.ErrMissed says notifications were lost.
	Next(ctx context.Context) (int, error)
	Close() error
}

// Reconnect describes a restored connection.
type Reconnect struct {
	// Down is the time from noticing the dead link to the kernel taking
	// the new socket.
	Down time.Duration
	// Attempts is the number of dials it took.
	Attempts int
	// LastErr is the error of the attempt before the one that worked,
	// empty if the first worked.
	LastErr string
}

// Keeper keeps the root's NBD device connected: when its socket dies it
// hands the kernel a new one, negotiated for the same export, with
// NBD_CMD_RECONFIGURE. Set the fields, then call Run once. Nothing on its
// path touches the filesystem but procfs.
type Keeper struct {
	// Index is the NBD device, /dev/nbdIndex.
	Index int
	// Server is the NBD server's address and Export the export's name,
	// which is the boot's token: no log line or error names it, as
	// errors are reported to the appliance.
	Server netip.AddrPort
	Export string
	// Size is the export's size in bytes: a reconnect that finds another
	// size is refused (zero: not checked).
	Size int64

	// PollInterval, DialTimeout and MaxBackoff default to
	// DefaultPollInterval, DefaultDialTimeout and DefaultMaxBackoff.
	PollInterval, DialTimeout, MaxBackoff time.Duration
	// Logger receives reconnects; nil discards.
	Logger *slog.Logger
	// OnReconnect, if set, is called after each reconnect, from Run's
	// goroutine: it must not block.
	OnReconnect func(Reconnect)

	// Test seams; nil means the real thing.
	//
	// Dial connects and negotiates (nbdroot.Dial).
	Dial func(ctx context.Context, addr, export string) (*net.TCPConn, nbd.ExportDetails, error)
	// Reconfigure hands conn to device index (kernel.Reconfigure).
	Reconfigure func(ctx context.Context, index int, conn *net.TCPConn) error
	// Watch subscribes to dead-link notifications (kernel.NewMonitor).
	Watch func() (LinkWatcher, error)
	// Established lists the local addresses of the established TCP
	// connections to remote (from /proc/net/tcp and tcp6).
	Established func(remote netip.AddrPort) ([]netip.AddrPort, error)

	reconnects atomic.Int64
	down       atomic.Bool
}

// Status is the Keeper's view of the root, for the heartbeat.
type Status struct {
	Device     string `json:"device"`
	Server     string `json:"server"`
	Connected  bool   `json:"connected"`
	Reconnects int64  `json:"reconnects"`
}

// Status returns the Keeper's current view. It is safe to call from any
// goroutine.
func (k *Keeper) Status() Status {
	return Status{
		Device: fmt.Sprintf("/dev/nbd%d", k.Index), Server: k.Server.String(),
		Connected: !k.down.Load(), Reconnects: k.reconnects.Load(),
	}
}

func (k *Keeper) logger() *slog.Logger {
	if k.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return k.Logger
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Run watches the device until ctx is done, reconnecting it whenever its
// connection dies, and returns nil then. It fails only if it can neither
// subscribe to notifications nor see the root's connection in the TCP
// table: it would have no way to notice a dead link.
func (k *Keeper) Run(ctx context.Context) error {
	log := k.logger().With("dev", fmt.Sprintf("nbd%d", k.Index), "peer", k.Server.String())
	wake := make(chan struct{}, 1)
	signal := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}

	watch := k.Watch
	if watch == nil {
		watch = func() (LinkWatcher, error) { return kernel.NewMonitor() }
	}
	w, werr := watch()
	if werr != nil {
		log.Warn("no dead-link notifications; polling the TCP table only", "err", werr)
	} else {
		done := make(chan struct{})
		defer func() { w.Close(); <-done }()
		go func() {
			defer close(done)
			for {
				idx, err := w.Next(ctx)
				switch {
				case ctx.Err() != nil || errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed):
					return
				case errors.Is(err, kernel.ErrMissed):
					log.Warn("dead-link notifications lost; checking")
					signal()
				case err != nil:
					log.Error("reading dead-link notifications; polling only", "err", err)
					signal()
					return
				case idx == k.Index:
					log.Debug("dead link notified")
					signal()
				}
			}
		}()
	}

	// If the root's connection isn't in the TCP table now, either it died
	// before the agent subscribed (an appliance restart while the board
	// boots: its notification is lost) or the table doesn't show it (the
	// agent runs in another network namespace). A reconnect tells which.
	poll := true
	if up, err := k.connected(); err != nil || !up {
		log.Warn("root connection not in the TCP table; reconnecting", "err", err)
		if !k.reconnect(ctx, log) {
			if werr != nil {
				return fmt.Errorf("cannot watch nbd%d: no notifications (%w) and its connection to %s is not in the TCP table", k.Index, werr, k.Server)
			}
			log.Error("the TCP table doesn't show the root's connection; relying on dead-link notifications only")
			poll = false
		}
	}
	log.Info("watching the root's connection", "notify", werr == nil, "poll", poll)
	tick := time.NewTicker(orDefault(k.PollInterval, DefaultPollInterval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
			// The kernel says the root's socket is dead: believe it,
			// whatever the TCP table shows (a build's own connection
			// to the appliance looks the same there). A late notice
			// costs one attempt the kernel declines.
		case <-tick.C:
			if !poll {
				continue
			}
			if up, err := k.connected(); err == nil && up {
				continue
			}
		}
		k.reconnect(ctx, log)
	}
}

// connected reports whether an established connection to the server
// exists.
func (k *Keeper) connected() (bool, error) {
	locals, err := k.established(k.Server)
	return len(locals) > 0, err
}

func (k *Keeper) established(remote netip.AddrPort) ([]netip.AddrPort, error) {
	if k.Established != nil {
		return k.Established(remote)
	}
	return establishedTo("/proc", remote)
}

// unseenLimit is how many reconnects in a row the kernel may accept
// without the new socket (or any) showing in the TCP table before the
// table is deemed blind: a dead link takes the first socket offered.
const unseenLimit = 3

// errUnseen is an attempt whose socket the kernel accepted but the TCP
// table doesn't show.
var errUnseen = errors.New("the kernel took the socket but the TCP table doesn't show it")

// reconnect dials until the kernel takes a new socket or ctx is done. It
// returns false if the TCP table can't see the connections (see
// unseenLimit).
func (k *Keeper) reconnect(ctx context.Context, log *slog.Logger) bool {
	k.down.Store(true)
	defer k.down.Store(false)
	start := time.Now()
	log.Warn("root connection dead; reconnecting")
	maxWait := orDefault(k.MaxBackoff, DefaultMaxBackoff)
	var lastErr error
	unseen := 0
	for attempt, wait := 1, minBackoff; ; attempt, wait = attempt+1, min(2*wait, maxWait) {
		adopted, err := k.attempt(ctx)
		if err == nil {
			r := Reconnect{Down: time.Since(start), Attempts: attempt}
			if lastErr != nil {
				r.LastErr = lastErr.Error()
			}
			if !adopted {
				// The kernel had no dead socket to replace: another
				// socket is up (a race with a notification that came late).
				k.down.Store(false) // before the log line, which tells the world
				log.Info("root connection was alive after all", "dur", r.Down)
				return true
			}
			k.reconnects.Add(1)
			k.down.Store(false)
			log.Warn("root reconnected", "dur", r.Down, "attempts", attempt)
			if k.OnReconnect != nil {
				k.OnReconnect(r)
			}
			return true
		}
		if errors.Is(err, errUnseen) {
			if unseen++; unseen >= unseenLimit {
				return false
			}
		} else {
			unseen = 0
		}
		if lastErr == nil || err.Error() != lastErr.Error() {
			log.Info("reconnect attempt failed", "attempt", attempt, "err", err)
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return true
		case <-time.After(wait):
		}
	}
}

// attempt dials, negotiates and reconfigures once. It reports whether the
// kernel adopted the new socket; (false, nil) means the kernel kept a live
// socket it already had.
func (k *Keeper) attempt(ctx context.Context) (bool, error) {
	dial := k.Dial
	if dial == nil {
		dial = nbdroot.Dial
	}
	dctx, cancel := context.WithTimeout(ctx, orDefault(k.DialTimeout, DefaultDialTimeout))
	conn, det, err := dial(dctx, k.Server.String(), k.Export)
	cancel()
	if err != nil {
		return false, err
	}
	if k.Size != 0 && det.Size != k.Size {
		conn.Close()
		return false, fmt.Errorf("export is %d bytes now, the root is %d: not attaching it", det.Size, k.Size)
	}
	local, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		conn.Close()
		return false, err
	}
	reconf := k.Reconfigure
	if reconf == nil {
		reconf = func(ctx context.Context, index int, conn *net.TCPConn) error {
			return kernel.Reconfigure(ctx, index, kernel.Config{}, conn)
		}
	}
	err = reconf(ctx, k.Index, conn)
	// The kernel holds its own reference when it took the socket; if it
	// didn't (no dead socket: the driver then drops it and still answers
	// success), closing ours ends the connection.
	conn.Close()
	if err != nil {
		return false, err
	}
	locals, err := k.established(k.Server)
	if err != nil {
		return false, err
	}
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	for _, l := range locals {
		if l == local {
			return true, nil
		}
	}
	if len(locals) > 0 {
		return false, nil
	}
	return false, errUnseen
}
