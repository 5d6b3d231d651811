package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/rackboot/rackboot/e2e"
)

// The stand-in stack, as a lab without rackboot boots a board from an NBD
// root: dnsmasq answers DHCP and serves PXELINUX, its config, the kernel
// and a busybox initramfs over TFTP; nbd-server serves the master image
// with copy-on-write; the initramfs brings the network up with udhcpc,
// attaches the root with Debian's nbd-client and switch_roots into it.
const (
	serverAddr = "10.66.0.1" // the rack's appliance address (e2e)
	nbdPort    = "10809"
	nbdExport  = "root"
)

// standinMarker is the line the stand-in's init prints right before
// switch_root, once the root is mounted from /dev/nbd0.
var standinMarker = regexp.MustCompile(`standin: \[[0-9.]+\] root mounted from /dev/nbd0`)

// standinModules are the modules the stand-in's init loads, with their
// dependencies from modules.dep: the NIC and build disk (virtio), the NBD
// driver, ext4 and the crc32c implementations ext4's metadata_csum needs
// (without modprobe in the initramfs, the kernel can't request them).
var standinModules = []string{"virtio_pci", "virtio_net", "virtio_blk", "nbd", "crc32c_generic", "crc32c-intel", "ext4"}

// standinInit is the stand-in's /init: the busybox way to an NBD root,
// with timestamped progress lines (the uptime, as the kernel's log).
const standinInit = `#!/bin/sh
# Stand-in init (scripts/benche2e): network up, NBD root attached with
# nbd-client, mounted, switch_root.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { read -r up _ </proc/uptime; echo "standin: [$up] $*"; }
fail() { say "FAILED: $*"; exec sh; }
say "init started"
while read -r m; do
	insmod "/lib/modules/$m" || say "insmod $m failed"
done </etc/modules.load
say "modules loaded"
nbdroot=
for arg in $(cat /proc/cmdline); do
	case $arg in nbdroot=*) nbdroot=${arg#nbdroot=} ;; esac
done
[ -n "$nbdroot" ] || fail "no nbdroot= on the command line"
# nbdroot=SERVER:PORT/EXPORT, as Debian's initramfs-tools nbd script reads it.
server=${nbdroot%%:*}
rest=${nbdroot#*:}
port=${rest%%/*}
name=${rest#*/}
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -q -n -s /etc/udhcpc.script || fail "no DHCP lease"
say "network up"
nbd-client "$server" -N "$name" "$port" /dev/nbd0 || fail "nbd-client $server $port $name"
mkdir -p /newroot
mount -t ext4 /dev/nbd0 /newroot || fail "mounting /dev/nbd0"
say "root mounted from /dev/nbd0 on /newroot, switch_root"
for d in dev proc sys; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /sbin/init
`

// udhcpcScript applies udhcpc's lease.
const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	ifconfig "$interface" "$ip" netmask "$subnet"
	if [ -n "$router" ]; then
		for r in $router; do ip route add default via "$r" dev "$interface"; break; done
	fi
	;;
esac
exit 0
`

// busyboxApplets are the applets the init and its scripts use.
var busyboxApplets = []string{"sh", "mount", "insmod", "cat", "mkdir", "udhcpc", "ip", "ifconfig", "switch_root", "ls", "dmesg"}

// pxelinuxConfig is the stand-in's pxelinux.cfg/default, as a lab writes
// it: the same kernel command line as rackboot's (console, BOOTIF through
// IPAPPEND 2), with the NBD root in Debian's nbdroot= form.
func pxelinuxConfig() string {
	return fmt.Sprintf(`DEFAULT standin
PROMPT 0
TIMEOUT 0
LABEL standin
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0,115200 nbdroot=%s:%s/%s
  IPAPPEND 2
`, serverAddr, nbdPort, nbdExport)
}

// standinSources are the host files the stand-in is built from.
type standinSources struct {
	Tree      string // boot tree: pxelinux.0, ldlinux.c32, amd64/vmlinuz
	Busybox   string // a static busybox
	NBDClient string // Debian's nbd-client
	Modules   string // lib/modules/RELEASE of the kernel in Tree
}

// buildStandinTFTP fills dir with the stand-in's TFTP root: PXELINUX,
// its config, the kernel and the busybox initramfs. It returns the
// initramfs's size.
func buildStandinTFTP(dir string, src standinSources) (int64, error) {
	if err := os.MkdirAll(filepath.Join(dir, "pxelinux.cfg"), 0o755); err != nil {
		return 0, err
	}
	for dst, from := range map[string]string{
		"pxelinux.0":  filepath.Join(src.Tree, "pxelinux.0"),
		"ldlinux.c32": filepath.Join(src.Tree, "ldlinux.c32"),
		"vmlinuz":     filepath.Join(src.Tree, "amd64", "vmlinuz"),
	} {
		if err := copyHostFile(filepath.Join(dir, dst), from); err != nil {
			return 0, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "pxelinux.cfg", "default"), []byte(pxelinuxConfig()), 0o644); err != nil {
		return 0, err
	}
	a, err := standinInitramfs(src)
	if err != nil {
		return 0, err
	}
	out := filepath.Join(dir, "initrd.gz")
	if err := a.writeGzip(out); err != nil {
		return 0, err
	}
	if err := os.Chmod(out, 0o644); err != nil {
		return 0, err
	}
	fi, err := os.Stat(out)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// standinInitramfs assembles the stand-in's initramfs.
func standinInitramfs(src standinSources) (*archive, error) {
	a := newArchive()
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "newroot", "etc", "tmp"} {
		a.dir(d)
	}
	a.charDev("dev/console", 0o600, 5, 1)
	a.file("init", 0o755, []byte(standinInit))
	a.file("etc/udhcpc.script", 0o755, []byte(udhcpcScript))
	if err := a.copyFile("bin/busybox", src.Busybox); err != nil {
		return nil, fmt.Errorf("busybox: %w", err)
	}
	for _, applet := range busyboxApplets {
		a.symlink("bin/"+applet, "busybox")
	}
	if err := a.copyFile("sbin/nbd-client", src.NBDClient); err != nil {
		return nil, fmt.Errorf("nbd-client: %w", err)
	}
	libs, err := sharedLibraries(src.NBDClient)
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		if err := a.copyFile(l, l); err != nil {
			return nil, fmt.Errorf("library of nbd-client: %w", err)
		}
	}
	dep, err := os.ReadFile(filepath.Join(src.Modules, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w (make initramfs unpacks them)", err)
	}
	order, err := moduleLoadOrder(dep, standinModules)
	if err != nil {
		return nil, err
	}
	var list strings.Builder
	for _, m := range order {
		if err := a.copyFile("lib/modules/"+path.Base(m), filepath.Join(src.Modules, m)); err != nil {
			return nil, err
		}
		fmt.Fprintln(&list, path.Base(m))
	}
	a.file("etc/modules.load", 0o644, []byte(list.String()))
	return a, nil
}

// lddLine matches the libraries ldd lists: "libx.so => /path (0x...)" and
// the loader's "/lib64/ld-linux-x86-64.so.2 (0x...)".
var lddLine = regexp.MustCompile(`^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)`)

// sharedLibraries returns the shared libraries and loader a binary needs,
// by the paths ldd resolves them to.
func sharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	return parseLDD(out), nil
}

func parseLDD(out []byte) []string {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := lddLine.FindStringSubmatch(sc.Text()); m != nil {
			libs = append(libs, m[1])
		}
	}
	return libs
}

// moduleLoadOrder returns the modules.dep paths of the wanted modules and
// all they depend on, each after its dependencies. Names match with '-'
// and '_' interchangeable, as modprobe matches them.
func moduleLoadOrder(modulesDep []byte, wanted []string) ([]string, error) {
	deps := map[string][]string{} // path -> dependency paths
	byName := map[string]string{} // normalised name -> path
	sc := bufio.NewScanner(bytes.NewReader(modulesDep))
	for sc.Scan() {
		p, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[p] = strings.Fields(rest)
		byName[moduleName(p)] = p
	}
	var order []string
	seen := map[string]bool{}
	var visit func(p string, depth int) error
	visit = func(p string, depth int) error {
		if seen[p] {
			return nil
		}
		if depth > 64 {
			return fmt.Errorf("modules.dep: dependency loop at %s", p)
		}
		d, ok := deps[p]
		if !ok {
			return fmt.Errorf("modules.dep: %s is a dependency but has no entry", p)
		}
		for _, q := range d {
			if err := visit(q, depth+1); err != nil {
				return err
			}
		}
		seen[p] = true
		order = append(order, p)
		return nil
	}
	for _, w := range wanted {
		p, ok := byName[normaliseModule(w)]
		if !ok {
			return nil, fmt.Errorf("module %s is not in modules.dep", w)
		}
		if err := visit(p, 0); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleName is a module's normalised name from its modules.dep path.
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return normaliseModule(base)
}

func normaliseModule(n string) string { return strings.ReplaceAll(n, "-", "_") }

// copyHostFile copies src to dst, world-readable (dnsmasq's TFTP server
// serves only world-readable files when started as root).
func copyHostFile(dst, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// standin is the stand-in stack on a rack of its own: dnsmasq for the
// whole run, nbd-server for each boot (as a lab runs one per job).
type standin struct {
	rack    *e2e.Rack
	dir     string // TFTP root, configs, logs
	dnsmasq *group
	nbd     *group
	image   string
	threads int // nbd-server max_threads
}

// dnsmasqArgs is dnsmasq as a lab runs it for DHCP and TFTP only: the
// board's reservation, the router, pxelinux.0 as the boot file. No DNS
// (port=0), no tuning.
func (s *standin) dnsmasqArgs(mac, ip string) []string {
	return []string{
		"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file",
		"--port=0", "--interface=br0", "--bind-interfaces",
		"--dhcp-range=10.66.0.100,10.66.0.200,255.255.255.0,1h",
		"--dhcp-host=" + mac + "," + ip,
		"--dhcp-option=option:router," + serverAddr,
		"--dhcp-boot=pxelinux.0",
		"--enable-tftp", "--tftp-root=" + filepath.Join(s.dir, "tftp"),
		"--dhcp-leasefile=" + filepath.Join(s.dir, "dnsmasq.leases"),
		"--log-facility=" + filepath.Join(s.dir, "dnsmasq.log"),
	}
}

// startDNSMasq starts dnsmasq in the rack's namespace and waits until its
// TFTP server is up.
func (s *standin) startDNSMasq(ctx context.Context, mac, ip string) error {
	g, err := startGroup(s.rack.NS, s.dnsmasqArgs(mac, ip), filepath.Join(s.dir, "dnsmasq.out"))
	if err != nil {
		return err
	}
	s.dnsmasq = g
	return g.waitFor(ctx, 10*time.Second, "dnsmasq ready", func() bool {
		b, _ := os.ReadFile(filepath.Join(s.dir, "dnsmasq.log"))
		return bytes.Contains(b, []byte("TFTP root is"))
	})
}

// nbdConfig is nbd-server's configuration: the master image with
// copy-on-write (each connection writes to a diff that is deleted when it
// ends).
func (s *standin) nbdConfig() string {
	return fmt.Sprintf(`[generic]
	listenaddr = %s
	port = %s
	max_threads = %d
[%s]
	exportname = %s
	copyonwrite = true
	cowdir = %s
`, serverAddr, nbdPort, s.threads, nbdExport, s.image, filepath.Join(s.dir, "cow"))
}

// startNBD starts a fresh nbd-server for one boot (-d: no fork, so it
// stays in its process group) and waits until it listens.
func (s *standin) startNBD(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(s.dir, "cow"), 0o755); err != nil {
		return err
	}
	conf := filepath.Join(s.dir, "nbd-server.conf")
	if err := os.WriteFile(conf, []byte(s.nbdConfig()), 0o644); err != nil {
		return err
	}
	g, err := startGroup(s.rack.NS, []string{"nbd-server", "-C", conf, "-d"}, filepath.Join(s.dir, "nbd-server.log"))
	if err != nil {
		return err
	}
	s.nbd = g
	return g.waitFor(ctx, 10*time.Second, "nbd-server listening", func() bool {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", s.rack.NS, "ss", "-Hltn", "sport = :"+nbdPort).Output()
		return err == nil && len(bytes.TrimSpace(out)) > 0
	})
}

// stopNBD stops the boot's nbd-server and deletes its copy-on-write diffs.
func (s *standin) stopNBD() error {
	if s.nbd == nil {
		return nil
	}
	err := s.nbd.stop()
	s.nbd = nil
	return errors.Join(err, os.RemoveAll(filepath.Join(s.dir, "cow")))
}

// close stops the servers.
func (s *standin) close() error {
	err := s.stopNBD()
	if s.dnsmasq != nil {
		err = errors.Join(err, s.dnsmasq.stop())
		s.dnsmasq = nil
	}
	return err
}
