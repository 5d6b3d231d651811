package rootfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"strconv"
	"strings"
)

// Expect is what [Inspect] checks an image against, beyond the rules
// every master image follows.
type Expect struct {
	// Hostname is the recipe's placeholder: /etc/hostname must hold it.
	Hostname string
	// Agent says the agent and its enabled unit must be there.
	Agent bool
}

// Inspect reads the ext4 image img with debugfs, without mounting it,
// and returns an error listing every way in which it is not a clean
// master image, or nil:
//
//   - /etc/machine-id missing or not empty (boards would share an ID);
//   - SSH host keys in /etc/ssh, or sshd without an enabled unit that
//     makes them at boot (rackboot-ssh-keygen.service);
//   - DHCP leases (/var/lib/dhcp, dhclient, dhcpcd, NetworkManager,
//     systemd-networkd), /var/lib/dbus/machine-id, systemd's random seed;
//   - anything under /var/log but empty directories;
//   - /build missing, not a directory or not empty;
//   - /etc/hostname other than want.Hostname;
//   - with want.Agent, the agent's unit missing or not enabled, or the
//     binary its ExecStart= runs missing or not executable;
//   - anything set to manage the boot interface at boot (systemd-networkd,
//     NetworkManager, ifupdown stanzas other than lo): the root is on NBD
//     over it;
//   - systemd-firstboot not masked: with an empty machine-id every boot is
//     a first boot, and it would wait for answers on the console.
//
// It is safe to run concurrently, on images nobody writes to.
func Inspect(ctx context.Context, img string, want Expect) error {
	if _, err := exec.LookPath("debugfs"); err != nil {
		return fmt.Errorf("inspecting %s: %w", img, err)
	}
	d := &debugfsReader{ctx: ctx, img: img}
	// One that fails here is not an ext4 image at all.
	if _, ok, err := d.lookup("/etc"); err != nil || !ok {
		return fmt.Errorf("inspecting %s: no /etc (%v): not a root file system", img, err)
	}
	var problems []error
	bad := func(p, format string, args ...any) {
		problems = append(problems, fmt.Errorf("%s: %s", p, fmt.Sprintf(format, args...)))
	}
	check := func(err error) {
		if err != nil {
			problems = append(problems, err)
		}
	}

	// Identity.
	switch e, ok, err := d.lookup("/etc/machine-id"); {
	case err != nil:
		check(err)
	case !ok:
		bad("/etc/machine-id", "missing (want an empty file: systemd then makes a transient ID at each boot)")
	case !e.regular():
		bad("/etc/machine-id", "not a regular file (mode %06o)", e.mode)
	case e.size != 0:
		bad("/etc/machine-id", "holds %d bytes: every board would share one machine ID (want it empty)", e.size)
	}
	if b, err := d.cat("/etc/hostname"); err != nil {
		check(err)
	} else if string(b) != want.Hostname+"\n" {
		bad("/etc/hostname", "is %q, want the placeholder %q", b, want.Hostname+"\n")
	}

	// Per-machine and per-boot state.
	ents, _, err := d.list("/etc/ssh")
	check(err)
	for _, e := range ents {
		if strings.HasPrefix(e.name, "ssh_host_") {
			bad("/etc/ssh/"+e.name, "SSH host key in the image: every board would share it")
		}
	}
	for _, l := range []struct{ dir, contains string }{
		{"/var/lib/dhcp", ""}, {"/var/lib/dhclient", ""}, {"/var/lib/dhcpcd", "lease"},
		{"/var/lib/NetworkManager", "lease"}, {"/var/lib/systemd/netif/leases", ""},
	} {
		ents, _, err := d.list(l.dir)
		check(err)
		for _, e := range ents {
			if strings.Contains(e.name, l.contains) {
				bad(path.Join(l.dir, e.name), "DHCP lease in the image")
			}
		}
	}
	for _, p := range []string{"/var/lib/systemd/random-seed", "/var/lib/systemd/credential.secret"} {
		if _, ok, err := d.lookup(p); err != nil {
			check(err)
		} else if ok {
			bad(p, "per-machine secret in the image")
		}
	}
	if e, ok, err := d.lookup("/var/lib/dbus/machine-id"); err != nil {
		check(err)
	} else if ok && !e.symlink() {
		bad("/var/lib/dbus/machine-id", "a D-Bus machine ID in the image (want none, or a symlink to /etc/machine-id)")
	}
	check(d.walk("/var/log", func(p string, e dirent) {
		if !e.dir() {
			bad(p, "in /var/log: the image must carry no logs (only empty directories)")
		}
	}))

	// The build disk's mount point.
	switch e, ok, err := d.lookup(BuildMount); {
	case err != nil:
		check(err)
	case !ok:
		bad(BuildMount, "missing: the initramfs mounts the build disk there")
	case !e.dir():
		bad(BuildMount, "not a directory (mode %06o)", e.mode)
	default:
		ents, _, err := d.list(BuildMount)
		check(err)
		for _, e := range ents {
			bad(path.Join(BuildMount, e.name), "in %s, which must be an empty mount point", BuildMount)
		}
	}

	// The agent.
	if want.Agent {
		unit := path.Base(AgentUnitPath)
		if d.masked(unit) {
			bad(unit, "masked")
		} else if file, ok, err := d.unitFile(unit); err != nil {
			check(err)
		} else if !ok {
			bad(unit, "the rackboot agent's unit is missing")
		} else if text, err := d.cat(file); err != nil {
			check(err)
		} else if bin, err := AgentBinaryPath(string(text)); err != nil {
			bad(file, "%v", err)
		} else {
			switch e, ok, err := d.lookup(bin); {
			case err != nil:
				check(err)
			case !ok:
				bad(bin, "the rackboot agent is missing (%s runs it)", file)
			case !e.regular() || e.mode&0o111 == 0 || e.size == 0:
				bad(bin, "the rackboot agent is not an executable file (mode %06o, %d bytes)", e.mode, e.size)
			}
			check(d.enabled(unit))
		}
	}
	if _, ok, err := d.lookup("/usr/sbin/sshd"); err != nil {
		check(err)
	} else if ok {
		if err := d.enabled("rackboot-ssh-keygen.service"); err != nil {
			bad("/usr/sbin/sshd", "installed, but nothing makes host keys at boot (the image has none): %v", err)
		}
	}

	// The boot interface carries the root: nothing may reconfigure it.
	for _, l := range []string{
		"multi-user.target.wants/systemd-networkd.service",
		"sockets.target.wants/systemd-networkd.socket",
		"network-online.target.wants/systemd-networkd-wait-online.service",
		"multi-user.target.wants/NetworkManager.service",
		"multi-user.target.wants/connman.service",
		"multi-user.target.wants/dhcpcd.service",
	} {
		p := "/etc/systemd/system/" + l
		if _, ok, err := d.lookup(p); err != nil {
			check(err)
		} else if ok {
			bad(p, "enabled: it would reconfigure the boot interface, which carries the root (NBD)")
		}
	}
	if b, err := d.cat("/etc/network/interfaces"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && (f[0] == "auto" || strings.HasPrefix(f[0], "allow-")) {
				for _, iface := range f[1:] {
					if iface != "lo" {
						bad("/etc/network/interfaces", "ifupdown brings up %s at boot; the boot interface carries the root (NBD)", iface)
					}
				}
			}
		}
	} else if !errors.Is(err, errNotFound) {
		check(err)
	}
	if _, ok, err := d.unitFile("systemd-firstboot.service"); err != nil {
		check(err)
	} else if ok && !d.masked("systemd-firstboot.service") {
		bad("systemd-firstboot.service", "not masked: with an empty /etc/machine-id every boot is a first boot, and it would wait for answers on the console")
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%s: %d problems:\n%w", img, len(problems), errors.Join(problems...))
}

// InspectDir runs [Inspect] on an output directory of [Build], with the
// expectations its manifest.json gives.
func InspectDir(ctx context.Context, dir string) error {
	m, err := ReadManifest(path.Join(dir, ManifestFile))
	if err != nil {
		return err
	}
	return Inspect(ctx, path.Join(dir, m.Image.File), Expect{Hostname: m.Hostname, Agent: m.Agent != nil})
}

var errNotFound = errors.New("not found")

// debugfsReader reads an ext4 image with debugfs -R, one request per run.
type debugfsReader struct {
	ctx context.Context
	img string
}

// dirent is one line of debugfs's ls -p.
type dirent struct {
	name string
	ino  uint64
	mode uint32
	size int64
}

func (e dirent) dir() bool     { return e.mode&0o170000 == 0o040000 }
func (e dirent) regular() bool { return e.mode&0o170000 == 0o100000 }
func (e dirent) symlink() bool { return e.mode&0o170000 == 0o120000 }

func (d *debugfsReader) run(req string) (stdout []byte, problems string, err error) {
	cmd := exec.CommandContext(d.ctx, "debugfs", "-R", req, d.img)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, "", fmt.Errorf("debugfs -R %q %s: %w\n%s", req, d.img, err, stderr.String())
	}
	return out.Bytes(), debugfsErrors(stderr.String()), nil
}

// list returns the entries of dir, without . and ..; ok is false if dir
// doesn't exist.
func (d *debugfsReader) list(dir string) (ents []dirent, ok bool, err error) {
	q, err := debugfsQuote(dir)
	if err != nil {
		return nil, false, err
	}
	out, problems, err := d.run("ls -p " + q)
	if err != nil {
		return nil, false, err
	}
	if strings.Contains(problems, "File not found") {
		return nil, false, nil
	}
	if problems != "" {
		return nil, false, fmt.Errorf("listing %s: %s", dir, problems)
	}
	for _, l := range strings.Split(string(out), "\n") {
		// /ino/mode/uid/gid/name/size/
		f := strings.Split(l, "/")
		if len(f) != 8 || f[0] != "" {
			continue
		}
		ino, err1 := strconv.ParseUint(f[1], 10, 64)
		mode, err2 := strconv.ParseUint(f[2], 8, 32)
		if err1 != nil || err2 != nil {
			return nil, false, fmt.Errorf("listing %s: unexpected debugfs line %q", dir, l)
		}
		size, _ := strconv.ParseInt(f[6], 10, 64)
		if f[5] == "." || f[5] == ".." || ino == 0 {
			continue
		}
		ents = append(ents, dirent{name: f[5], ino: ino, mode: uint32(mode), size: size})
	}
	return ents, true, nil
}

// lookup returns the entry at p (not following a final symlink).
func (d *debugfsReader) lookup(p string) (dirent, bool, error) {
	dir, name := path.Split(path.Clean(p))
	ents, ok, err := d.list(dir)
	if err != nil || !ok {
		return dirent{}, false, err
	}
	for _, e := range ents {
		if e.name == name {
			return e, true, nil
		}
	}
	return dirent{}, false, nil
}

// cat returns the content of the file at p, or an error wrapping
// errNotFound.
func (d *debugfsReader) cat(p string) ([]byte, error) {
	e, ok, err := d.lookup(p)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: %w", p, errNotFound)
	}
	if !e.regular() {
		return nil, fmt.Errorf("%s: not a regular file (mode %06o)", p, e.mode)
	}
	q, err := debugfsQuote(p)
	if err != nil {
		return nil, err
	}
	out, problems, err := d.run("cat " + q)
	if err != nil {
		return nil, err
	}
	if problems != "" {
		return nil, fmt.Errorf("reading %s: %s", p, problems)
	}
	return out, nil
}

// walk calls fn for every entry under dir, depth first, without
// following symlinks.
func (d *debugfsReader) walk(dir string, fn func(p string, e dirent)) error {
	ents, _, err := d.list(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := path.Join(dir, e.name)
		fn(p, e)
		if e.dir() {
			if err := d.walk(p, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// unitDirs are where systemd finds system units, most specific first.
var unitDirs = []string{"/etc/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}

// unitFile returns the path of the unit's file, ignoring a mask.
func (d *debugfsReader) unitFile(unit string) (string, bool, error) {
	masked := d.masked(unit)
	for _, dir := range unitDirs {
		p := path.Join(dir, unit)
		if _, ok, err := d.lookup(p); err != nil {
			return "", false, err
		} else if ok && !(masked && dir == unitDirs[0]) {
			return p, true, nil
		}
	}
	return "", false, nil
}

// masked reports whether /etc/systemd/system/UNIT is a symlink (to
// /dev/null: debugfs shows the target only in stat, and nothing else puts
// a symlink of a unit's own name there).
func (d *debugfsReader) masked(unit string) bool {
	e, ok, err := d.lookup("/etc/systemd/system/" + unit)
	if err != nil || !ok || !e.symlink() {
		return false
	}
	q, _ := debugfsQuote("/etc/systemd/system/" + unit)
	out, _, err := d.run("stat " + q)
	return err == nil && bytes.Contains(out, []byte(`"/dev/null"`))
}

// enabled returns nil if unit is installed, not masked, and enabled: a
// symlink to it in /etc/systemd/system/TARGET.wants or .requires for one
// of the targets its [Install] section names.
func (d *debugfsReader) enabled(unit string) error {
	if d.masked(unit) {
		return fmt.Errorf("%s: masked", unit)
	}
	file, ok, err := d.unitFile(unit)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s: no such unit (in %s)", unit, strings.Join(unitDirs, ", "))
	}
	b, err := d.cat(file)
	if err != nil {
		return err
	}
	var links []string
	section := ""
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") {
			section = l
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if section != "[Install]" || !ok {
			continue
		}
		suffix := map[string]string{"WantedBy": ".wants", "RequiredBy": ".requires"}[strings.TrimSpace(k)]
		if suffix == "" {
			continue
		}
		for _, t := range strings.Fields(v) {
			links = append(links, "/etc/systemd/system/"+t+suffix+"/"+unit)
		}
	}
	if len(links) == 0 {
		return fmt.Errorf("%s: no WantedBy= or RequiredBy= in its [Install] section: it can't be enabled", file)
	}
	for _, l := range links {
		if e, ok, err := d.lookup(l); err != nil {
			return err
		} else if ok && e.symlink() {
			return nil
		}
	}
	return fmt.Errorf("%s: not enabled (none of %s)", unit, strings.Join(links, ", "))
}
