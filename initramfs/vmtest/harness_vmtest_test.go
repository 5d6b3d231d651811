//go:build vmtest && linux

package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rackboot/rackboot/initramfs/report"
	"github.com/rackboot/rackboot/internal/eventtest"
	"github.com/rackboot/rackboot/internal/netns"
	"github.com/rackboot/rackboot/internal/testenv"
	vnetns "github.com/vishvananda/netns"
)

const (
	serverIP = "10.99.0.1"
	boardIP  = "10.99.0.10"
	nbdAddr  = serverIP + ":10809"
	token    = "vmtoken1"
	export   = "root@" + token
	marker   = "RACKBOOT-MARKER-0123456789"
)

// arch is how a board of one architecture boots in QEMU: TCG, the kernel
// and initramfs from -kernel/-initrd, virtio network and disk.
type arch struct {
	name          string // amd64, arm64, armhf: scripts/kernel.sh's
	goarch, goarm string
	qemu          string
	machine       []string
	console       string
	// nic and disk make the virtio devices (PCI on x86, MMIO on ARM).
	nic  func(mac string) []string
	disk func(path string) []string
}

var archs = map[string]arch{
	"amd64": {
		name: "amd64", goarch: "amd64", qemu: "qemu-system-x86_64",
		machine: []string{"-accel", "tcg", "-cpu", "max", "-M", "pc"},
		console: "ttyS0",
		nic:     func(mac string) []string { return []string{"-device", "virtio-net-pci,netdev=n0,mac=" + mac} },
		disk:    func(p string) []string { return []string{"-drive", "file=" + p + ",format=raw,if=virtio"} },
	},
	"arm64": {
		name: "arm64", goarch: "arm64", qemu: "qemu-system-aarch64",
		machine: []string{"-accel", "tcg", "-M", "virt", "-cpu", "cortex-a72"},
		console: "ttyAMA0",
		nic:     mmioNIC,
		disk:    mmioDisk,
	},
	"armhf": {
		name: "armhf", goarch: "arm", goarm: "7", qemu: "qemu-system-arm",
		machine: []string{"-accel", "tcg", "-M", "virt,highmem=off", "-cpu", "cortex-a15"},
		console: "ttyAMA0",
		nic:     mmioNIC,
		disk:    mmioDisk,
	},
}

func mmioNIC(mac string) []string {
	return []string{"-device", "virtio-net-device,netdev=n0,mac=" + mac}
}

func mmioDisk(p string) []string {
	return []string{"-drive", "file=" + p + ",format=raw,if=none,id=d0", "-device", "virtio-blk-device,drive=d0"}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "../.."))
}

// artifacts returns the kernel, initramfs and busybox-static of a, or
// skips.
func artifacts(t *testing.T, a arch) (kernel, initrd, busybox string) {
	t.Helper()
	root := repoRoot(t)
	// QEMU boots vmlinuz as packaged (a bzImage, an arm64 Image, gzipped
	// or not, an ARM zImage).
	kernel = filepath.Join(root, "out/boot", a.name, "vmlinuz")
	initrd = filepath.Join(root, "out/boot", a.name, "initramfs.cpio.gz")
	busybox = filepath.Join(root, "out/cache", a.name, "busybox/bin/busybox")
	for _, p := range []string{kernel, initrd, busybox} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("%s missing: run `make initramfs ARCH=%s` (scripts/kernel.sh %s) first", p, a.name, a.name)
			if os.Getenv("RACKBOOT_REQUIRE_TOOLS") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return kernel, initrd, busybox
}

// goBuild builds a static program for a into dir and returns its path.
func goBuild(t *testing.T, a arch, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+a.goarch, "GOARM="+a.goarm)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s for %s: %v\n%s", pkg, a.name, err, b)
	}
	return out
}

// rootTree makes the skeleton of a test root with busybox, returning the
// tree's directory.
func rootTree(t *testing.T, busybox string) string {
	t.Helper()
	tree := filepath.Join(t.TempDir(), "tree")
	for _, d := range []string{"bin", "sbin", "usr/sbin", "proc", "sys", "dev", "run", "etc", "tmp", "build"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tree, "bin/busybox"), b, 0o755)
	os.Symlink("busybox", filepath.Join(tree, "bin/sh"))
	os.WriteFile(filepath.Join(tree, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	return tree
}

// mkfs makes an ext4 image of size from tree.
func mkfs(t *testing.T, tree, size string) string {
	t.Helper()
	img := filepath.Join(filepath.Dir(tree), "root.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "testroot", "-d", tree, img, size).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

// buildDisk is a raw disk with markers where a partition table and a
// filesystem would go.
func buildDisk(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "build.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(128 << 20)
	for _, off := range []int64{0, 512, 1 << 20, 1<<20 + 1024, 3 << 20} {
		f.WriteAt([]byte(marker), off)
	}
	return p
}

// markerCheck is the test root's check that the build disk was wiped: how
// many markers the first 4 MiB of DISK still hold.
const markerCheck = `$bb dd if=DISK bs=1M count=4 2>/dev/null | $bb tr -c 'A-Z0-9-' '\n' | $bb grep -c ` + marker

// listenIn listens on addr inside namespace ns.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := vnetns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := vnetns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer vnetns.Set(orig)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// reports records what the initramfs and the agent report.
type reports struct {
	mu    sync.Mutex
	steps []report.Step
	at    []time.Time
}

func (r *reports) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != "/api/v1/report" || req.Header.Get("Authorization") != "Bearer "+token {
		http.Error(w, "no", http.StatusForbidden)
		return
	}
	var s report.Step
	if err := json.NewDecoder(req.Body).Decode(&s); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.steps = append(r.steps, s)
	r.at = append(r.at, time.Now())
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (r *reports) all() []report.Step {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]report.Step(nil), r.steps...)
}

// console collects a guest's serial output and lets the test wait for
// lines.
type console struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []string
	ch    chan struct{}
}

func (c *console) run(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		c.mu.Lock()
		c.lines = append(c.lines, line)
		c.buf.WriteString(line + "\n")
		c.mu.Unlock()
		select {
		case c.ch <- struct{}{}:
		default:
		}
	}
}

// find returns the first line matching re, from line from on.
func (c *console) find(re *regexp.Regexp) []string {
	return c.findFrom(0, re)
}

func (c *console) findFrom(from int, re *regexp.Regexp) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines[min(from, len(c.lines)):] {
		if m := re.FindStringSubmatch(l); m != nil {
			return m
		}
	}
	return nil
}

// findAll returns every line matching re.
func (c *console) findAll(re *regexp.Regexp) [][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]string
	for _, l := range c.lines {
		if m := re.FindStringSubmatch(l); m != nil {
			out = append(out, m)
		}
	}
	return out
}

func (c *console) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// wait waits for a line matching re from line from on, until ctx is done,
// QEMU exits or the init reports a failure.
func (c *console) wait(ctx context.Context, from int, re *regexp.Regexp, exited <-chan struct{}) ([]string, error) {
	failed := regexp.MustCompile(`BOOT FAILED|Kernel panic`)
	for {
		if m := c.findFrom(from, re); m != nil {
			return m, nil
		}
		if m := c.find(failed); m != nil {
			return nil, fmt.Errorf("the boot failed: %s", m[0])
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-exited:
			if m := c.findFrom(from, re); m != nil {
				return m, nil
			}
			return nil, errors.New("QEMU exited")
		case <-c.ch:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// lab is the appliance side of a VM test: a namespace with DHCP
// (dnsmasq), `rackboot nbd` and a report endpoint, and a switch with a tap
// for the board.
type lab struct {
	t        *testing.T
	ctx      context.Context
	srv      *netns.Host
	sw       string
	dir      string
	rootImg  string
	rackboot string
	reps     *reports
	port     int

	mu     sync.Mutex
	nbd    *exec.Cmd
	nbdLog eventtest.Buffer
	dhcp   eventtest.Buffer
}

func newLab(t *testing.T, ctx context.Context, rootImg string) *lab {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.LookPath(t, "dnsmasq")
	n := netns.New(t)
	l := &lab{t: t, ctx: ctx, sw: n.Switch, dir: t.TempDir(), rootImg: rootImg, reps: &reports{}}
	l.srv = n.AddHost(netns.MAC(1), mustPrefix(serverIP+"/24"))

	l.rackboot = filepath.Join(l.dir, "rackboot")
	if out, err := exec.Command("go", "build", "-o", l.rackboot, "../../cmd/rackboot").CombinedOutput(); err != nil {
		t.Fatalf("building rackboot: %v\n%s", err, out)
	}
	l.startNBD()
	t.Cleanup(l.stopNBD)

	dnsmasq := l.srv.Command(ctx, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces",
		"--dhcp-range=10.99.0.50,10.99.0.60,1h", "--dhcp-host="+netns.MAC(2).String()+","+boardIP, "--no-ping", "--log-dhcp",
		"--dhcp-leasefile="+filepath.Join(l.dir, "leases"), "--pid-file="+filepath.Join(l.dir, "dnsmasq.pid"))
	dnsmasq.Stdout, dnsmasq.Stderr = &l.dhcp, &l.dhcp
	if err := dnsmasq.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dnsmasq.Process.Kill(); dnsmasq.Wait() })

	ln := listenIn(t, l.srv.Name, serverIP+":0")
	hs := &http.Server{Handler: l.reps}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	l.port = ln.Addr().(*net.TCPAddr).Port

	for _, args := range [][]string{
		{"-n", n.Switch, "tuntap", "add", "tap0", "mode", "tap"},
		{"-n", n.Switch, "link", "set", "tap0", "master", "br0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return l
}

// startNBD starts `rackboot nbd` serving the root image, its sessions in
// the lab's state directory (which survive restarts).
func (l *lab) startNBD() {
	l.t.Helper()
	cmd := l.srv.Command(l.ctx, l.rackboot, "nbd", "--listen", nbdAddr, "--image", "root="+l.rootImg, "--state", filepath.Join(l.dir, "state"))
	cmd.Stdout, cmd.Stderr = &l.nbdLog, &l.nbdLog
	// ip netns exec execs the server: the PID is the server's.
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.mu.Lock()
	l.nbd = cmd
	l.mu.Unlock()
	// Wait until it listens.
	for range 100 {
		if out, _ := exec.Command("ip", "netns", "exec", l.srv.Name, "ss", "-Hltn", "sport = :10809").Output(); len(bytes.TrimSpace(out)) > 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.t.Fatalf("rackboot nbd does not listen:\n%s", l.nbdLog.String())
}

// killNBD kills `rackboot nbd` with SIGKILL: no drain, no sync.
func (l *lab) killNBD() {
	l.mu.Lock()
	cmd := l.nbd
	l.nbd = nil
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

// stopNBD stops it with SIGTERM, the graceful way.
func (l *lab) stopNBD() {
	l.mu.Lock()
	cmd := l.nbd
	l.nbd = nil
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// cmdline is the kernel command line the appliance would generate.
func (l *lab) cmdline(a arch, extra ...string) string {
	return strings.Join(append([]string{
		"console=" + a.console + ",115200", "panic=-1",
		"rackboot.server=" + serverIP,
		fmt.Sprintf("rackboot.http=http://%s:%d/", serverIP, l.port),
		"rackboot.board=vmboard", "rackboot.token=" + token,
		fmt.Sprintf("rackboot.nbd=nbd://%s/%s", nbdAddr, export),
		"rackboot.disk=largest", "rackboot.fail_delay=0",
		"BOOTIF=01-" + strings.ReplaceAll(netns.MAC(2).String(), ":", "-"),
	}, extra...), " ")
}

// vm is a running board.
type vm struct {
	con   *console
	done  chan struct{} // closed when QEMU exits
	start time.Time
}

// boot starts QEMU for a in the lab's switch namespace.
func (l *lab) boot(a arch, kernel, initrd, disk, cmdline string) *vm {
	t := l.t
	t.Helper()
	qemu := testenv.LookPath(t, a.qemu)
	args := append([]string{"netns", "exec", l.sw, qemu}, a.machine...)
	args = append(args, "-m", "1G", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no")
	args = append(args, a.nic(netns.MAC(2).String())...)
	args = append(args, a.disk(disk)...)
	q := exec.CommandContext(l.ctx, "ip", args...)
	out, err := q.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	q.Stderr = q.Stdout
	v := &vm{con: &console{ch: make(chan struct{}, 1)}, done: make(chan struct{})}
	v.start = time.Now()
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.con.run(out); q.Wait(); close(v.done) }()
	t.Cleanup(func() {
		q.Process.Kill()
		<-v.done
		if t.Failed() {
			t.Logf("console:\n%s", v.con.buf.String())
			t.Logf("dnsmasq:\n%s", l.dhcp.String())
			t.Logf("rackboot nbd:\n%s", l.nbdLog.String())
		}
	})
	return v
}

// initTimings summarises the init's console lines: /init to switch_root
// and each step's share of it.
func initTimings(con *console) (summary string, initDur, withoutDisk time.Duration) {
	stepRE := regexp.MustCompile(`rackboot: \[([0-9.]+)\] step=(\S+) status=(\S+) dur=(\S+)`)
	startRE := regexp.MustCompile(`rackboot: \[([0-9.]+)\] init started`)
	srRE := regexp.MustCompile(`rackboot: \[([0-9.]+)\] switch_root to .*`)
	modRE := regexp.MustCompile(`rackboot: (\d+ modules loaded.*)`)
	var initAt, srAt float64
	if m := con.find(startRE); m != nil {
		initAt, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := con.find(srRE); m != nil {
		srAt, _ = strconv.ParseFloat(m[1], 64)
	}
	var diskDur time.Duration
	var lines []string
	for _, m := range con.findAll(stepRE) {
		d, _ := time.ParseDuration(m[4])
		if m[2] == "disk" {
			diskDur = d
		}
		share := 0.0
		if srAt > initAt {
			share = 100 * d.Seconds() / (srAt - initAt)
		}
		lines = append(lines, fmt.Sprintf("  %-12s %-6s %8s %5.1f%%", m[2], m[3], d, share))
	}
	if m := con.find(modRE); m != nil {
		lines = append(lines, "  "+m[1])
	}

	initDur = time.Duration((srAt - initAt) * float64(time.Second))
	summary = fmt.Sprintf("kernel start to /init: %.3fs; /init to switch_root: %s (%s without the build disk); kernel start to switch_root: %.3fs\n%s",
		initAt, initDur.Round(time.Millisecond), (initDur - diskDur).Round(time.Millisecond), srAt, strings.Join(lines, "\n"))
	return summary, initDur, initDur - diskDur
}

func fields(s string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}
