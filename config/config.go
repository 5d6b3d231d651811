package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults for fields that are absent from the config file (or set to null).
const (
	// DefaultLogLevel is the default for [Config.LogLevel].
	DefaultLogLevel = "info"
	// DefaultNBDListen is the default for [NBD.Listen]: the IANA-assigned
	// NBD port on all addresses.
	DefaultNBDListen = ":10809"
	// DefaultDrainTimeout is the default for [NBD.DrainTimeout].
	DefaultDrainTimeout = 30 * time.Second
	// DefaultMaxConnections is the default for [NBD.MaxConnections].
	DefaultMaxConnections = 1024
	// DefaultMaxConnectionsPerPeer is the default for
	// [NBD.MaxConnectionsPerPeer]: a board's root takes one connection,
	// and one more while the agent reconnects it.
	DefaultMaxConnectionsPerPeer = 16
	// DefaultDHCPMode is the default for [DHCP.Mode]: no DHCP server.
	DefaultDHCPMode = "off"
	// DefaultLeaseTime is the default for [DHCP.LeaseTime].
	DefaultLeaseTime = time.Hour
	// DefaultConflictCheck is the default for [DHCP.ConflictCheck], and
	// MaxConflictCheck its bound (dhcp.MaxConflictWait).
	DefaultConflictCheck = 250 * time.Millisecond
	MaxConflictCheck     = time.Second
	// DefaultTFTPListen is the default for [TFTP.Listen].
	DefaultTFTPListen = ":69"
	// DefaultHTTPListen is the default for [HTTP.Listen].
	DefaultHTTPListen = ":8080"
	// DefaultUnknownBoards is the default for [Boot.UnknownBoards].
	DefaultUnknownBoards = "ignore"
)

// Arches are the board architectures rackboot boots.
var Arches = []string{"amd64", "arm64", "armhf"}

// Config is rackboot's configuration, as read from its YAML file by [Load]
// or [Parse]. A Config returned by them is valid and has its defaults
// applied and its relative paths resolved. It is not modified afterwards,
// so it is safe for concurrent reads.
type Config struct {
	// To add a section, add a field with a `yaml` tag, set its defaults in
	// defaults() and check it in validate(); decoding needs no changes.

	// StateDir is the directory that holds write layers and other state.
	// Required. The server creates it if missing; Load does not check it.
	StateDir string `yaml:"state_dir"`
	// LogLevel is one of debug, info, warn or error; see [Config.Level].
	LogLevel string `yaml:"log_level"`
	// NBD configures the NBD server.
	NBD NBD `yaml:"nbd"`
	// Images are the base images that boards can boot.
	Images []Image `yaml:"images"`
	// Address is the appliance's IPv4 address as boards reach it, used in
	// the boot configs and command lines it generates. Default: the first
	// address of the first DHCP interface.
	Address netip.Addr `yaml:"address"`
	// DHCP configures the DHCP server.
	DHCP DHCP `yaml:"dhcp"`
	// TFTP configures the TFTP server.
	TFTP TFTP `yaml:"tftp"`
	// HTTP configures the HTTP server (boot files, iPXE scripts, reports).
	HTTP HTTP `yaml:"http"`
	// Boot says what boards boot.
	Boot Boot `yaml:"boot"`
	// Boards is the inventory.
	Boards []Board `yaml:"boards"`

	file  string         // file name for errors
	lines map[string]int // field path ("images[1].name") → line in file
}

// NBD configures the NBD server.
type NBD struct {
	// Listen is the host:port to listen on. The port must be numeric;
	// port 0 (any free port) is allowed for tests. Default DefaultNBDListen.
	Listen string `yaml:"listen"`
	// DrainTimeout bounds how long shutdown waits for in-flight requests.
	// It is written as a Go duration ("30s", "1m30s") and must be
	// positive. Default DefaultDrainTimeout.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// MaxConnections is the maximum number of concurrent NBD connections,
	// at least 1. Default DefaultMaxConnections.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerPeer is the maximum number of concurrent NBD
	// connections from one address, so that one board can't take every
	// connection; 0 means no limit. Default DefaultMaxConnectionsPerPeer.
	MaxConnectionsPerPeer int `yaml:"max_connections_per_peer"`
}

// Image is a base image that boards boot from. Boards never write to it:
// writes go to a per-session layer in [Config.StateDir].
type Image struct {
	// Name identifies the image: 1 to 64 characters from [A-Za-z0-9._-],
	// starting with a letter or digit, unique within the file. It is used
	// in NBD export names of the form NAME@SESSION, so it cannot contain '@'.
	Name string `yaml:"name"`
	// Path is the image file. A relative path is resolved against the
	// directory of the config file. Required. Load does not check that it
	// exists; see [Config.CheckFiles].
	Path string `yaml:"path"`
}

// DHCP configures the DHCP server.
type DHCP struct {
	// Mode is full (addresses and boot info), proxy (boot info only, for
	// networks with their own DHCP server) or off. Default off.
	Mode string `yaml:"mode"`
	// Interfaces are the boot network interfaces to serve on. Required
	// unless Mode is off; exactly one in full mode.
	Interfaces []string `yaml:"interfaces"`
	// RangeStart and RangeEnd bound the dynamic pool (full mode) for
	// machines without a fixed address. Required in full mode.
	RangeStart netip.Addr `yaml:"range_start"`
	RangeEnd   netip.Addr `yaml:"range_end"`
	// Router and DNS are handed to clients (options 3 and 6).
	Router netip.Addr   `yaml:"router"`
	DNS    []netip.Addr `yaml:"dns"`
	// LeaseTime is the lease duration (full mode). Default 1h.
	LeaseTime time.Duration `yaml:"lease_time"`
	// Probe makes full mode refuse to start when another DHCP server
	// answers on an interface. Default true.
	Probe *bool `yaml:"probe"`
	// ConflictCheck is how long full mode waits for a host to answer the
	// ARP probe it sends for a pool address before offering it (an
	// address some host answers for is withheld); 0 turns the check off.
	// Reserved addresses are not checked. Default 250ms, at most 1s.
	ConflictCheck time.Duration `yaml:"conflict_check"`
}

// TFTP configures the TFTP server.
type TFTP struct {
	// Listen is host:port, default ":69". Empty string "off" disables it.
	Listen string `yaml:"listen"`
}

// HTTP configures the HTTP server.
type HTTP struct {
	// Listen is host:port, default ":8080".
	Listen string `yaml:"listen"`
}

// Boot says what boards boot.
type Boot struct {
	// Tree is the boot tree directory: bootloaders (pxelinux, iPXE),
	// kernels and initramfs images, served read-only over TFTP and HTTP.
	// Required when there are boards.
	Tree string `yaml:"tree"`
	// Kernels maps an architecture (amd64, arm64, armhf) to the kernel and
	// initramfs its boards boot, as paths inside Tree.
	Kernels map[string]Kernel `yaml:"kernels"`
	// Cmdline is appended to every board's kernel command line.
	Cmdline string `yaml:"cmdline"`
	// UnknownBoards is what machines outside the inventory get when they
	// network-boot: ignore (recorded, nothing booted) or identify (booted
	// into the initramfs to report themselves and power off). Default
	// ignore.
	UnknownBoards string `yaml:"unknown_boards"`
}

// Kernel is the kernel and initramfs of an architecture.
type Kernel struct {
	Kernel string `yaml:"kernel"`
	Initrd string `yaml:"initrd"`
}

// Board is a board of the inventory.
type Board struct {
	// Name is 1-63 of [A-Za-z0-9._-], starting with a letter or digit.
	Name string `yaml:"name"`
	// MAC is the boot interface's hardware address.
	MAC string `yaml:"mac"`
	// Arch is amd64, arm64 or armhf.
	Arch string `yaml:"arch"`
	// IP is an optional fixed address (full DHCP mode).
	IP netip.Addr `yaml:"ip"`
	// Image names the image the board boots.
	Image string `yaml:"image"`
	// Cmdline holds extra kernel command-line arguments.
	Cmdline string `yaml:"cmdline"`
	// BuildDisk selects the build disk for the initramfs: "largest",
	// "serial:SERIAL", "by-id:NAME" for virtio-, nvme- and mmc- names
	// (the initramfs has no udev to name others), or "none".
	BuildDisk string `yaml:"build_disk"`
	// Console overrides the kernel console (default by arch).
	Console string `yaml:"console"`
	// Loader is what iPXE firmware is given: "ipxe" (the default: the
	// HTTP iPXE script, fastest) or "pxelinux" (PXELINUX over TFTP, as
	// plain PXE firmware gets).
	Loader string `yaml:"loader"`
}

// HardwareAddr returns the board's MAC; it is valid after Load.
func (b Board) HardwareAddr() net.HardwareAddr {
	m, _ := net.ParseMAC(b.MAC)
	return m
}

// defaults returns a Config holding the default of every field; the file
// is decoded on top of it.
func defaults() *Config {
	return &Config{
		LogLevel: DefaultLogLevel,
		NBD: NBD{
			Listen:                DefaultNBDListen,
			DrainTimeout:          DefaultDrainTimeout,
			MaxConnections:        DefaultMaxConnections,
			MaxConnectionsPerPeer: DefaultMaxConnectionsPerPeer,
		},
		DHCP: DHCP{Mode: DefaultDHCPMode, LeaseTime: DefaultLeaseTime, ConflictCheck: DefaultConflictCheck},
		TFTP: TFTP{Listen: DefaultTFTPListen},
		HTTP: HTTP{Listen: DefaultHTTPListen},
		Boot: Boot{UnknownBoards: DefaultUnknownBoards},
	}
}

// Load reads, decodes and validates the config file at path. Relative paths
// in the file are resolved against the absolute directory of path.
//
// All problems in the file are reported together, joined with
// [errors.Join] and sorted by line, each as "file:line: field: problem",
// for example
//
//	rackboot.yaml:3: nbd.lisen: unknown field (known: listen, drain_timeout, max_connections, max_connections_per_peer)
//
// If the file cannot be read the error wraps the [fs.PathError]'s cause,
// so errors.Is(err, fs.ErrNotExist) reports a missing file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s: %s: %w", path, pe.Op, pe.Err)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: resolving directory: %w", path, err)
	}
	return Parse(path, data, dir)
}

// Parse decodes and validates a config file's contents. name is the file
// name used in errors, and relative paths in the file are joined to dir
// (left relative if dir is empty). Errors are reported as by [Load].
//
// Decoding is strict: unknown or duplicate keys, values of the wrong kind,
// YAML aliases and more than one YAML document are errors. An empty file
// decodes to the defaults (and then fails validation, since state_dir is
// required).
func Parse(name string, data []byte, dir string) (*Config, error) {
	c := defaults()
	c.file = name
	c.lines = map[string]int{}
	l := &errorList{file: name, lines: c.lines, bad: map[string]bool{}}
	if decodeFile(l, data, c) {
		c.validate(l, dir)
	}
	if err := l.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// imageName is the syntax of [Image.Name].
var imageName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// validate checks c's fields and resolves relative paths against dir.
// It reports problems to l, which skips fields that failed to decode.
func (c *Config) validate(l *errorList, dir string) {
	if c.StateDir == "" {
		l.addf("state_dir", "required")
	} else {
		c.StateDir = resolve(dir, c.StateDir)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		l.add("log_level", err)
	}

	if err := checkListen(c.NBD.Listen); err != nil {
		l.add("nbd.listen", err)
	}
	if c.NBD.DrainTimeout <= 0 {
		l.addf("nbd.drain_timeout", "must be positive, got %v", c.NBD.DrainTimeout)
	}
	if c.NBD.MaxConnections < 1 {
		l.addf("nbd.max_connections", "must be at least 1, got %d", c.NBD.MaxConnections)
	}
	if c.NBD.MaxConnectionsPerPeer < 0 {
		l.addf("nbd.max_connections_per_peer", "must be 0 (no limit) or more, got %d", c.NBD.MaxConnectionsPerPeer)
	}

	names := map[string]string{} // name → path of its first use
	for i := range c.Images {
		img := &c.Images[i]
		p := fmt.Sprintf("images[%d]", i)
		switch {
		case img.Name == "":
			l.addf(p+".name", "required")
		case strings.Contains(img.Name, "@"):
			l.addf(p+".name", "invalid image name %q: '@' is reserved for NAME@SESSION export names", img.Name)
		case !imageName.MatchString(img.Name):
			l.addf(p+".name", "invalid image name %q: want 1-64 of [A-Za-z0-9._-], starting with a letter or digit", img.Name)
		default:
			if first, dup := names[img.Name]; dup {
				l.addf(p+".name", "duplicate image name %q (first at line %d)", img.Name, l.lineOf(first))
			} else {
				names[img.Name] = p + ".name"
			}
		}
		if img.Path == "" {
			l.addf(p+".path", "required")
		} else {
			img.Path = resolve(dir, img.Path)
		}
	}
	c.validateBoot(l, dir, names)
}

var boardName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// validateBoot checks the boot-serving sections and the inventory.
func (c *Config) validateBoot(l *errorList, dir string, images map[string]string) {
	d := &c.DHCP
	switch d.Mode {
	case "off":
	case "full", "proxy":
		if len(d.Interfaces) == 0 {
			l.addf("dhcp.interfaces", "required in %s mode", d.Mode)
		}
	default:
		l.addf("dhcp.mode", "invalid mode %q (want full, proxy or off)", d.Mode)
	}
	if d.Mode == "full" {
		if len(d.Interfaces) > 1 {
			// One range, router and lease table: two networks can't
			// share them, and two servers on one network would hand
			// out the same addresses.
			l.addf("dhcp.interfaces", "full mode serves one interface, not %d (run one rackboot per boot network, or proxy mode)", len(d.Interfaces))
		}
		switch {
		case !d.RangeStart.IsValid():
			l.addf("dhcp.range_start", "required in full mode")
		case !d.RangeStart.Is4():
			l.addf("dhcp.range_start", "%s is not an IPv4 address", d.RangeStart)
		}
		switch {
		case !d.RangeEnd.IsValid():
			l.addf("dhcp.range_end", "required in full mode")
		case !d.RangeEnd.Is4():
			l.addf("dhcp.range_end", "%s is not an IPv4 address", d.RangeEnd)
		case d.RangeStart.IsValid() && d.RangeEnd.Less(d.RangeStart):
			l.addf("dhcp.range_end", "%s is below range_start %s", d.RangeEnd, d.RangeStart)
		}
	}
	if d.LeaseTime < time.Minute {
		l.addf("dhcp.lease_time", "must be at least 1m, got %v", d.LeaseTime)
	}
	if d.ConflictCheck < 0 || d.ConflictCheck > MaxConflictCheck {
		l.addf("dhcp.conflict_check", "must be between 0 (off) and %v, got %v", MaxConflictCheck, d.ConflictCheck)
	}
	if c.TFTP.Listen != "off" {
		if err := checkListen(c.TFTP.Listen); err != nil {
			l.add("tftp.listen", err)
		}
	}
	if err := checkListen(c.HTTP.Listen); err != nil {
		l.add("http.listen", err)
	}
	if c.Address.IsValid() && !c.Address.Is4() {
		l.addf("address", "%s is not an IPv4 address", c.Address)
	}
	if c.Address.IsValid() && c.Address.IsUnspecified() {
		l.addf("address", "%s is not an address boards can reach", c.Address)
	}

	b := &c.Boot
	if b.Tree != "" {
		b.Tree = resolve(dir, b.Tree)
	} else if len(c.Boards) > 0 {
		l.addf("boot.tree", "required when boards are configured")
	}
	for _, arch := range slices.Sorted(maps.Keys(b.Kernels)) {
		k := b.Kernels[arch]
		p := fmt.Sprintf("boot.kernels[%q]", arch)
		if !slices.Contains(Arches, arch) {
			l.addf(p, "unknown architecture %q (want %s)", arch, strings.Join(Arches, ", "))
		}
		if k.Kernel == "" {
			l.addf(p+".kernel", "required")
		}
		if k.Initrd == "" {
			l.addf(p+".initrd", "required")
		}
	}
	if b.UnknownBoards != "ignore" && b.UnknownBoards != "identify" {
		l.addf("boot.unknown_boards", "invalid policy %q (want ignore or identify)", b.UnknownBoards)
	}

	names, macs, ips := map[string]string{}, map[string]string{}, map[netip.Addr]string{}
	for i := range c.Boards {
		bd := &c.Boards[i]
		p := fmt.Sprintf("boards[%d]", i)
		switch {
		case bd.Name == "":
			l.addf(p+".name", "required")
		case !boardName.MatchString(bd.Name):
			l.addf(p+".name", "invalid board name %q: want 1-63 of [A-Za-z0-9._-], starting with a letter or digit", bd.Name)
		default:
			if first, dup := names[bd.Name]; dup {
				l.addf(p+".name", "duplicate board name %q (first at line %d)", bd.Name, l.lineOf(first))
			}
			names[bd.Name] = p + ".name"
		}
		if bd.MAC == "" {
			l.addf(p+".mac", "required")
		} else if m, err := net.ParseMAC(bd.MAC); err != nil || len(m) != 6 {
			l.addf(p+".mac", "invalid MAC %q (want six hex pairs like 52:54:00:12:34:56)", bd.MAC)
		} else {
			bd.MAC = m.String()
			if first, dup := macs[bd.MAC]; dup {
				l.addf(p+".mac", "MAC %s already belongs to the board at line %d", bd.MAC, l.lineOf(first))
			}
			macs[bd.MAC] = p + ".mac"
		}
		switch {
		case bd.Arch == "":
			l.addf(p+".arch", "required")
		case !slices.Contains(Arches, bd.Arch):
			l.addf(p+".arch", "unknown architecture %q (want %s)", bd.Arch, strings.Join(Arches, ", "))
		default:
			// Catalog images carry their own kernels; images named
			// here boot those of boot.kernels.
			if _, ok := b.Kernels[bd.Arch]; !ok && images[bd.Image] != "" {
				l.addf(p+".arch", "no boot.kernels entry for %s", bd.Arch)
			}
		}
		if bd.IP.IsValid() {
			if !bd.IP.Is4() {
				l.addf(p+".ip", "%s is not an IPv4 address", bd.IP)
			} else if first, dup := ips[bd.IP]; dup {
				l.addf(p+".ip", "address %s already belongs to the board at line %d", bd.IP, l.lineOf(first))
			} else if d.Mode == "full" && d.RangeStart.IsValid() && d.RangeEnd.IsValid() &&
				!bd.IP.Less(d.RangeStart) && !d.RangeEnd.Less(bd.IP) {
				l.addf(p+".ip", "fixed address %s is inside the dynamic range %s-%s", bd.IP, d.RangeStart, d.RangeEnd)
			}
			ips[bd.IP] = p + ".ip"
		}
		switch {
		case bd.Image == "":
			l.addf(p+".image", "required")
		case images[bd.Image] == "" && !imageName.MatchString(bd.Image):
			l.addf(p+".image", "invalid image name %q", bd.Image)
		}
		if bd.Loader != "" && bd.Loader != "ipxe" && bd.Loader != "pxelinux" {
			l.addf(p+".loader", "invalid loader %q (want ipxe or pxelinux)", bd.Loader)
		}
		if bd.BuildDisk != "" {
			if err := checkDiskSelector(bd.BuildDisk); err != nil {
				l.add(p+".build_disk", err)
			}
		}
	}
}

// derivedIDPrefixes are the /dev/disk/by-id names the initramfs, which
// has no udev, derives from sysfs itself (initramfs/disk).
var derivedIDPrefixes = []string{"virtio-", "nvme-", "mmc-"}

// checkDiskSelector checks a build disk selector for what the initramfs
// can match: by-path names and SATA, SCSI or USB by-id names need udev,
// which it lacks, and would fail the board's disk step on every boot.
func checkDiskSelector(s string) error {
	if s == "largest" || s == "none" {
		return nil
	}
	kind, val, ok := strings.Cut(s, ":")
	if !ok || val == "" || strings.ContainsAny(val, " \t") {
		return fmt.Errorf("invalid selector %q (want largest, none, by-id:NAME, or serial:SERIAL)", s)
	}
	switch kind {
	case "serial":
		return nil
	case "by-id":
		name := strings.TrimPrefix(val, "/dev/disk/by-id/")
		for _, p := range derivedIDPrefixes {
			if strings.HasPrefix(name, p) {
				return nil
			}
		}
		return fmt.Errorf("%q: the board's initramfs has no udev and names only virtio-, nvme- and mmc- disks by id; use serial:SERIAL", s)
	case "by-path":
		return fmt.Errorf("%q: the board's initramfs has no udev, so no by-path names; use serial:SERIAL or by-id:NAME", s)
	}
	return fmt.Errorf("invalid selector %q (want largest, none, by-id:NAME, or serial:SERIAL)", s)
}

// resolve joins a relative path to dir.
func resolve(dir, path string) string {
	if filepath.IsAbs(path) {
		return filepath.Clean(path)
	}
	return filepath.Join(dir, path)
}

// checkListen checks a host:port listen address. The port must be a number;
// port 0 (any free port) is allowed.
func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		return fmt.Errorf("invalid host:port %q: %w", addr, err)
	}
	if strings.ContainsAny(host, " \t\r\n") {
		return fmt.Errorf("invalid host:port %q: host contains white space", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("invalid host:port %q: port must be a number from 0 to 65535", addr)
	}
	return nil
}

// parseLevel parses a log level name. Only the four lowercase names are
// accepted, unlike [slog.Level.UnmarshalText].
func parseLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("invalid log level %q (want debug, info, warn or error)", s)
}

// Level returns [Config.LogLevel] as a [slog.Level]. It returns
// [slog.LevelInfo] if LogLevel is empty or invalid, which only happens if
// c was not returned by [Load] or [Parse].
func (c *Config) Level() slog.Level {
	lvl, err := parseLevel(c.LogLevel)
	if err != nil {
		return slog.LevelInfo
	}
	return lvl
}

// CheckFiles checks that every image path names an existing regular file
// (following symbolic links). Load and Parse do not touch the file system,
// so call CheckFiles where that is wanted, as check-config does. Problems
// are reported like those of [Load], for example
//
//	rackboot.yaml:9: images[0].path: stat /srv/img/minimal.img: no such file or directory
//
// and the errors wrap the [fs.PathError]s from [os.Stat].
func (c *Config) CheckFiles() error {
	l := &errorList{file: c.file, lines: c.lines}
	if c.Boot.Tree != "" {
		if fi, err := os.Stat(c.Boot.Tree); err != nil {
			l.add("boot.tree", err)
		} else if !fi.IsDir() {
			l.addf("boot.tree", "%s is not a directory", c.Boot.Tree)
		}
	}
	named := map[string]bool{}
	for _, img := range c.Images {
		named[img.Name] = true
	}
	for i, b := range c.Boards {
		// A board's image is one named here or one imported into the
		// catalog (STATE/images/NAME/active, written by rackboot image).
		if named[b.Image] || b.Image == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(c.StateDir, "images", b.Image, "active")); err != nil {
			l.addf(fmt.Sprintf("boards[%d].image", i), "unknown image %q: not in images, and no active version in the catalog (rackboot image import)", b.Image)
		}
	}
	for i, img := range c.Images {
		p := fmt.Sprintf("images[%d].path", i)
		fi, err := os.Stat(img.Path)
		switch {
		case err != nil:
			l.add(p, err)
		case fi.IsDir():
			l.addf(p, "%s is a directory, not a regular file", img.Path)
		case !fi.Mode().IsRegular():
			l.addf(p, "%s is not a regular file (mode %v)", img.Path, fi.Mode())
		}
	}
	return l.err()
}
