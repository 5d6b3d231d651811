package cmdline

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults for parameters that are not given.
const (
	DefaultInit      = "/sbin/init"
	DefaultFailDelay = 30 * time.Second
	// DefaultNBDPort is the IANA NBD port, used when rackboot.nbd has none.
	DefaultNBDPort = "10809"
)

// Modes of the initramfs.
const (
	ModeBoot     = "boot"
	ModeIdentify = "identify"
)

// DiskNone is the rackboot.disk value for boards without a build disk.
const DiskNone = "none"

// Config is what the command line asks of the initramfs.
type Config struct {
	Mode   string
	Server string
	// HTTP is the appliance's HTTP base URL, ending in "/".
	HTTP  string
	Board string
	Token string
	// NBDAddr is the NBD server as host:port, NBDExport the export name.
	NBDAddr, NBDExport string
	// Disk is the build disk selector; empty when there is none.
	Disk         string
	DiskOptional bool
	Init         string
	FailDelay    time.Duration
	Modules      []string
	// Shell asks for a shell on the console on failure.
	Shell bool
	// BootIF is the MAC of the boot interface, nil if not given.
	BootIF net.HardwareAddr
	// Unknown lists rackboot.* parameters this version doesn't know.
	Unknown []string
}

// ReportURL is the appliance's report endpoint.
func (c Config) ReportURL() string {
	if c.HTTP == "" {
		return ""
	}
	return strings.TrimSuffix(c.HTTP, "/") + "/api/v1/report"
}

// Error lists what is wrong with a command line. Parse returns it with the
// Config parsed so far, which is good enough to report with when Server,
// HTTP and Token were valid.
type Error struct {
	Missing []string // required parameters not given
	Invalid []string // "name=value: reason"
}

func (e *Error) Error() string {
	var parts []string
	if len(e.Missing) > 0 {
		parts = append(parts, "missing "+strings.Join(e.Missing, ", "))
	}
	if len(e.Invalid) > 0 {
		parts = append(parts, "invalid "+strings.Join(e.Invalid, "; "))
	}
	return "kernel command line: " + strings.Join(parts, "; ")
}

// Parse parses a kernel command line (the contents of /proc/cmdline).
// Values may be double-quoted. On error it returns an *Error and the
// Config parsed so far.
func Parse(line string) (Config, error) {
	c := Config{Mode: ModeBoot, Init: DefaultInit, FailDelay: DefaultFailDelay}
	e := &Error{}
	invalid := func(k, v string, why string) {
		e.Invalid = append(e.Invalid, fmt.Sprintf("%s=%s: %s", k, v, why))
	}
	seen := map[string]bool{}
	for _, f := range fields(line) {
		k, v, _ := strings.Cut(f, "=")
		if k == "BOOTIF" {
			mac, err := parseBootIF(v)
			if err != nil {
				invalid(k, v, err.Error())
				continue
			}
			c.BootIF = mac
			continue
		}
		name, ok := strings.CutPrefix(k, "rackboot.")
		if !ok {
			continue
		}
		if v != "" {
			seen[name] = true
		}
		switch name {
		case "server":
			c.Server = v
		case "http":
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				invalid(k, v, "want http://HOST[:PORT]/")
				continue
			}
			if !strings.HasSuffix(v, "/") {
				v += "/"
			}
			c.HTTP = v
		case "board":
			c.Board = v
		case "token":
			c.Token = v
		case "nbd":
			addr, export, err := parseNBD(v)
			if err != nil {
				invalid(k, v, err.Error())
				continue
			}
			c.NBDAddr, c.NBDExport = addr, export
		case "disk":
			// The last one wins, "none" included: per-board extras
			// come after the board's selector on the command line.
			c.Disk = v
			if v == DiskNone {
				c.Disk = ""
			}
		case "disk_optional":
			b, err := strconv.ParseBool(v)
			if err != nil {
				invalid(k, v, "want 0 or 1")
				continue
			}
			c.DiskOptional = b
		case "mode":
			if v != ModeBoot && v != ModeIdentify {
				invalid(k, v, "want boot or identify")
				continue
			}
			c.Mode = v
		case "init":
			if !strings.HasPrefix(v, "/") {
				invalid(k, v, "want an absolute path")
				continue
			}
			c.Init = v
		case "fail_delay":
			d, err := parseDelay(v)
			if err != nil {
				invalid(k, v, err.Error())
				continue
			}
			c.FailDelay = d
		case "modules":
			for m := range strings.SplitSeq(v, ",") {
				if m != "" {
					c.Modules = append(c.Modules, m)
				}
			}
		case "debug":
			if v != "shell" {
				invalid(k, v, "want shell")
				continue
			}
			c.Shell = true
		default:
			c.Unknown = append(c.Unknown, k)
		}
	}
	required := []string{"server", "http", "token"}
	if c.Mode == ModeBoot {
		required = append(required, "board", "nbd")
	}
	for _, r := range required {
		if !seen[r] {
			e.Missing = append(e.Missing, "rackboot."+r)
		}
	}
	slices.Sort(c.Unknown)
	if len(e.Missing) > 0 || len(e.Invalid) > 0 {
		return c, e
	}
	return c, nil
}

// fields splits a command line at spaces outside double quotes and drops
// the quotes, as the kernel does.
func fields(line string) []string {
	var out []string
	var b strings.Builder
	inQuote, any := false, false
	for _, r := range line {
		switch {
		case r == '"':
			inQuote = !inQuote
			any = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if any {
				out = append(out, b.String())
				b.Reset()
				any = false
			}
		default:
			b.WriteRune(r)
			any = true
		}
	}
	if any {
		out = append(out, b.String())
	}
	return out
}

// parseBootIF parses PXELINUX's BOOTIF=01-aa-bb-cc-dd-ee-ff (ARP type 1,
// Ethernet).
func parseBootIF(v string) (net.HardwareAddr, error) {
	hw, rest, ok := strings.Cut(v, "-")
	if !ok || hw != "01" {
		return nil, errors.New("want 01-aa-bb-cc-dd-ee-ff")
	}
	mac, err := net.ParseMAC(strings.ReplaceAll(rest, "-", ":"))
	if err != nil || len(mac) != 6 {
		return nil, errors.New("want 01-aa-bb-cc-dd-ee-ff")
	}
	return mac, nil
}

// parseNBD parses nbd://HOST[:PORT]/EXPORT (the NBD URI scheme, without
// TLS or Unix sockets).
func parseNBD(v string) (addr, export string, err error) {
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "nbd" || u.Host == "" {
		return "", "", errors.New("want nbd://HOST[:PORT]/EXPORT")
	}
	export = strings.TrimPrefix(u.Path, "/")
	if export == "" {
		return "", "", errors.New("no export name")
	}
	port := u.Port()
	if port == "" {
		port = DefaultNBDPort
	}
	return net.JoinHostPort(u.Hostname(), port), export, nil
}

// maxDelay bounds the delays the command line sets: a day is longer than
// anyone waits for a board.
const maxDelay = 24 * time.Hour

// parseDelay accepts a Go duration or a number of seconds, up to maxDelay.
func parseDelay(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		if n > int(maxDelay/time.Second) {
			return 0, fmt.Errorf("at most %v", maxDelay)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, errors.New("want a duration (30s) or seconds")
	}
	if d > maxDelay {
		return 0, fmt.Errorf("at most %v", maxDelay)
	}
	return d, nil
}
