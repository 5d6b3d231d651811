package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rackboot/rackboot/initramfs/identity"
	"github.com/rackboot/rackboot/nbd"
	"golang.org/x/sys/unix"
)

// Config is the command line of rackboot-agent. Each flag can also be set
// with the environment variable named after it (RACKBOOT_AGENT_HEARTBEAT
// for --heartbeat); flags win.
type Config struct {
	BootJSON     string
	Heartbeat    time.Duration
	BuildMount   string
	PollInterval time.Duration
	LogLevel     string
	// Mlock locks the agent's memory (see Main); off only for tests on a
	// host.
	Mlock bool
}

// Main is rackboot-agent: it parses args, locks the agent's pages in
// memory, reads boot.json, runs an Agent until SIGINT or SIGTERM and
// returns the exit status. version is the build's, reported in the
// heartbeat. Logs go to stderr through a buffer that never blocks (see
// package doc).
func Main(version string, args []string, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, version, args, stderr); err != nil {
		fmt.Fprintln(stderr, "rackboot-agent:", err)
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

var errUsage = errors.New("usage")

// parseConfig parses the flags, with the environment (getenv) as
// defaults.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet("rackboot-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := Config{}
	fs.StringVar(&c.BootJSON, "boot-json", identity.Path, "the boot's identity, written by the initramfs")
	fs.DurationVar(&c.Heartbeat, "heartbeat", DefaultHeartbeat, "interval between heartbeats")
	fs.StringVar(&c.BuildMount, "build", DefaultBuildMount, "the build disk's mount point, awaited before reporting ready")
	fs.DurationVar(&c.PollInterval, "poll", DefaultPollInterval, "interval between checks of the root's TCP connection (dead-link notifications come at once)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&c.Mlock, "mlock", true, "lock the agent's memory so that it never pages from the root")
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := "RACKBOOT_AGENT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(name); v != "" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %w", name, v, errUsage)
			}
		}
	})
	if envErr != nil {
		return c, envErr
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, err
		}
		return c, fmt.Errorf("%w: %w", err, errUsage)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	if c.Heartbeat <= 0 || c.PollInterval <= 0 {
		return c, fmt.Errorf("--heartbeat and --poll must be positive: %w", errUsage)
	}
	return c, nil
}

func run(ctx context.Context, version string, args []string, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "check-export" {
		return checkExport(ctx, args[1:], os.Stdout)
	}
	cfg, err := parseConfig(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("--log-level %q: %w", cfg.LogLevel, errUsage)
	}
	// Everything the agent may need from the root is read now, before the
	// root can stall: the executable's pages, boot.json, the time zone
	// (time.Local loads /etc/localtime on first use).
	var memNote string
	if cfg.Mlock {
		if err := lockMemory(); err != nil {
			return fmt.Errorf("locking memory: %w", err)
		}
		memNote = memoryLocked()
	}
	_ = time.Now().Local().String()
	id, err := identity.Read(cfg.BootJSON)
	if err != nil {
		return err
	}

	lctx, lcancel := context.WithCancel(context.WithoutCancel(ctx))
	logw := newDropWriter(lctx, stderr)
	defer func() { lcancel(); logw.wait() }()
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{
		Level: level,
		// journald and the console stamp lines themselves.
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))

	server, err := resolve(ctx, id.NBDAddr)
	if err != nil {
		return err
	}
	k := &Keeper{
		Index: id.NBDIndex, Server: server, Export: id.Export, Size: id.Size,
		PollInterval: cfg.PollInterval, Logger: log,
	}
	a := &Agent{Identity: id, Heartbeat: cfg.Heartbeat, BuildMount: cfg.BuildMount, Keeper: k, Logger: log, Version: version}
	log.Info("rackboot-agent started", "board", id.Board, "dev", id.Device, "peer", server.String(),
		"version", version, "memory", memNote)
	notify("READY=1")
	return a.Run(ctx)
}

// resolve turns HOST:PORT into an address once, at start: a name lookup
// reads /etc/hosts and /etc/resolv.conf, which live on the root.
func resolve(ctx context.Context, hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap, nil
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("NBD server %q: %w", hostport, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("NBD server %q: bad port", hostport)
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolving NBD server %q: %w", host, err)
	}
	return netip.AddrPortFrom(addrs[0].Unmap(), uint16(p)), nil
}

// lockMemory keeps every page of the agent in memory, so that nothing it
// does waits on the root while the root's connection is down: its
// executable's pages (file-backed, so otherwise dropped and read back from
// the root under memory pressure) are locked and read in now; everything
// else is locked as it is touched (MCL_ONFAULT), which costs only what the
// agent uses: a plain mlockall(MCL_CURRENT|MCL_FUTURE) would also fault
// in the Go runtime's untouched reservations, about 40 MB on 64-bit.
func lockMemory() error {
	err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT)
	if errors.Is(err, unix.EINVAL) { // kernels before 4.4
		return unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE)
	}
	if err != nil {
		return err
	}
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		// start-end perms offset dev inode path
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], "/") {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			return fmt.Errorf("/proc/self/maps line %q", line)
		}
		// mlock(2) without MLOCK_ONFAULT reads the pages in now.
		if _, _, errno := unix.Syscall(unix.SYS_MLOCK, uintptr(start), uintptr(end-start), 0); errno != 0 {
			return fmt.Errorf("mlock %s (%s): %w", f[0], f[5], errno)
		}
	}
	return nil
}

// memoryLocked summarises /proc/self/status's VmRSS and VmLck.
func memoryLocked() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	var parts []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && (k == "VmRSS" || k == "VmLck") {
			parts = append(parts, k+"="+strings.ReplaceAll(strings.TrimSpace(v), " ", ""))
		}
	}
	return strings.Join(parts, ",")
}

// notify sends state to systemd (sd_notify), when run as a Type=notify
// service.
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}

// checkExport is `rackboot-agent check-export nbd://HOST:PORT/EXPORT`: a
// diagnostic that negotiates the export with NBD_OPT_GO and prints its
// size and flags, or fails with the server's refusal. The lab uses it to
// check what a board can and can't attach.
func checkExport(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) != 1 || !strings.HasPrefix(args[0], "nbd://") {
		return fmt.Errorf("usage: rackboot-agent check-export nbd://HOST:PORT/EXPORT: %w", errUsage)
	}
	hostport, export, ok := strings.Cut(strings.TrimPrefix(args[0], "nbd://"), "/")
	if !ok {
		return fmt.Errorf("%s: no export name: %w", args[0], errUsage)
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		hostport = net.JoinHostPort(hostport, "10809")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return err
	}
	defer conn.Close()
	details, err := nbd.Handshake(ctx, conn, export)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "export %s: %d bytes, flags %#x\n", export, details.Size, details.Flags)
	return nil
}
