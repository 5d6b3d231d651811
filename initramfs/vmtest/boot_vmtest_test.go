//go:build vmtest && linux

// Package vmtest boots the real initramfs (out/boot/ARCH from
// scripts/kernel.sh) in QEMU against a real NBD server and DHCP server in
// a network namespace, and checks that the board ends up in its root.
//
//	make initramfs ARCH=amd64
//	go test -tags vmtest -run TestBoot -v ./initramfs/vmtest/
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
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rackboot/rackboot/initramfs/report"
	"github.com/rackboot/rackboot/internal/netns"
	"github.com/rackboot/rackboot/internal/testenv"
	vnetns "github.com/vishvananda/netns"
)

const (
	serverIP = "10.99.0.1"
	boardIP  = "10.99.0.10"
	token    = "vmtoken1"
	marker   = "RACKBOOT-MARKER-0123456789"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "../.."))
}

// artifacts returns the kernel, initramfs and busybox-static of arch, or
// skips.
func artifacts(t *testing.T, arch string) (kernel, initrd, busybox string) {
	t.Helper()
	root := repoRoot(t)
	kernel = filepath.Join(root, "out/boot", arch, "vmlinuz")
	initrd = filepath.Join(root, "out/boot", arch, "initramfs.cpio.gz")
	busybox = filepath.Join(root, "out/cache", arch, "busybox/bin/busybox")
	for _, p := range []string{kernel, initrd, busybox} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("%s missing: run `make initramfs ARCH=%s` (scripts/kernel.sh %s) first", p, arch, arch)
			if os.Getenv("RACKBOOT_REQUIRE_TOOLS") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return kernel, initrd, busybox
}

// testRoot makes an ext4 image whose /sbin/init reports what it sees and
// powers off.
func testRoot(t *testing.T, busybox string) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for _, d := range []string{"bin", "sbin", "proc", "sys", "dev", "run", "etc", "tmp", "build"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tree, "bin/busybox"), b, 0o755)
	os.Symlink("busybox", filepath.Join(tree, "bin/sh"))
	os.WriteFile(filepath.Join(tree, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	script := `#!/bin/sh
bb=/bin/busybox
root=$($bb awk '$2=="/"{print $1","$3","substr($4,1,2)}' /proc/mounts)
build=$($bb awk '$2=="/build"{print $1","$3}' /proc/mounts)
label=$($bb dd if=/dev/vda1 bs=1 skip=1144 count=16 2>/dev/null | $bb tr -d '\000')
markers=$($bb dd if=/dev/vda bs=1M count=4 2>/dev/null | $bb tr -c 'A-Z0-9-' '\n' | $bb grep -c ` + marker + `)
echo written > /written && $bb sync && w=$($bb cat /written)
echo "RACKBOOT-TEST-ROOT root=$root build=$build label=$label markers=$markers hostname=$($bb cat /etc/hostname) machineid=$($bb wc -c < /etc/machine-id) written=$w pid=$$"
$bb poweroff -f
`
	os.WriteFile(filepath.Join(tree, "sbin/init"), []byte(script), 0o755)
	img := filepath.Join(dir, "root.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "testroot", "-d", tree, img, "32M").CombinedOutput(); err != nil {
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

// reports records what the initramfs reports.
type reports struct {
	mu    sync.Mutex
	steps []report.Step
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
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// console collects a guest's serial output and lets the test wait for
// lines.
type console struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []string
	ch    chan struct{}
}

func (c *console) run(r io.Reader, t *testing.T) {
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

func (c *console) find(re *regexp.Regexp) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if m := re.FindStringSubmatch(l); m != nil {
			return m
		}
	}
	return nil
}

// wait waits for a line matching re, until ctx is done, QEMU exits or the
// init reports a failure.
func (c *console) wait(ctx context.Context, re *regexp.Regexp, exited <-chan struct{}) ([]string, error) {
	failed := regexp.MustCompile(`BOOT FAILED`)
	for {
		if m := c.find(re); m != nil {
			return m, nil
		}
		if m := c.find(failed); m != nil {
			return nil, fmt.Errorf("the init failed: %s", m[0])
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-exited:
			if m := c.find(re); m != nil {
				return m, nil
			}
			return nil, errors.New("QEMU exited")
		case <-c.ch:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func TestBootAMD64(t *testing.T) {
	testenv.RequireRoot(t)
	qemu := testenv.LookPath(t, "qemu-system-x86_64")
	testenv.LookPath(t, "mkfs.ext4")
	testenv.LookPath(t, "dnsmasq")
	kernel, initrd, busybox := artifacts(t, "amd64")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	// The appliance side: one namespace with DHCP, NBD and the report
	// endpoint; the board is a QEMU guest on a tap in the switch.
	n := netns.New(t)
	srv := n.AddHost(netns.MAC(1), mustPrefix(serverIP+"/24"))
	boardMAC := netns.MAC(2)

	dir := t.TempDir()
	rootImg := testRoot(t, busybox)
	disk := buildDisk(t)

	bin := filepath.Join(dir, "rackboot")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/rackboot").CombinedOutput(); err != nil {
		t.Fatalf("building rackboot: %v\n%s", err, out)
	}
	var nbdLog bytes.Buffer
	nbdCmd := srv.Command(ctx, bin, "nbd", "--listen", serverIP+":10809", "--image", "root="+rootImg, "--state", filepath.Join(dir, "state"))
	nbdCmd.Stdout, nbdCmd.Stderr = &nbdLog, &nbdLog
	if err := nbdCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { nbdCmd.Process.Kill(); nbdCmd.Wait() }()

	var dhcpLog syncBuffer
	dnsmasq := srv.Command(ctx, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces",
		"--dhcp-range=10.99.0.50,10.99.0.60,1h", "--dhcp-host="+boardMAC.String()+","+boardIP, "--no-ping", "--log-dhcp",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "dnsmasq.pid"))
	dnsmasq.Stdout, dnsmasq.Stderr = &dhcpLog, &dhcpLog
	if err := dnsmasq.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { dnsmasq.Process.Kill(); dnsmasq.Wait() }()

	reps := &reports{}
	ln := listenIn(t, srv.Name, serverIP+":0")
	hs := &http.Server{Handler: reps}
	go hs.Serve(ln)
	defer hs.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	run := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("-n", n.Switch, "tuntap", "add", "tap0", "mode", "tap")
	run("-n", n.Switch, "link", "set", "tap0", "master", "br0", "up")

	appendLine := strings.Join([]string{
		"console=ttyS0,115200", "panic=-1",
		"rackboot.server=" + serverIP,
		fmt.Sprintf("rackboot.http=http://%s:%d/", serverIP, port),
		"rackboot.board=vmboard", "rackboot.token=" + token,
		fmt.Sprintf("rackboot.nbd=nbd://%s:10809/root@%s", serverIP, token),
		"rackboot.disk=largest", "rackboot.fail_delay=0",
		"BOOTIF=01-" + strings.ReplaceAll(boardMAC.String(), ":", "-"),
	}, " ")
	q := exec.CommandContext(ctx, "ip", "netns", "exec", n.Switch, qemu,
		"-accel", "tcg", "-cpu", "max", "-M", "pc", "-m", "1G", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", appendLine,
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac="+boardMAC.String(),
		"-drive", "file="+disk+",format=raw,if=virtio")
	out, err := q.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	q.Stderr = q.Stdout
	con := &console{ch: make(chan struct{}, 1)}
	start := time.Now()
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { con.run(out, t); close(done) }()
	defer func() {
		q.Process.Kill()
		<-done
		q.Wait()
		if t.Failed() {
			t.Logf("console:\n%s", con.buf.String())
			t.Logf("dnsmasq:\n%s", dhcpLog.String())
			t.Logf("rackboot nbd:\n%s", nbdLog.String())
		}
	}()

	rootRE := regexp.MustCompile(`RACKBOOT-TEST-ROOT (.*)`)
	m, err := con.wait(ctx, rootRE, done)
	if err != nil {
		t.Fatalf("the test root's init line never came: %v", err)
	}
	wall := time.Since(start)
	<-done // poweroff ends QEMU
	got := fields(m[1])
	t.Logf("test root says: %s (QEMU start to root init: %s)", m[1], wall.Round(time.Millisecond))

	if !strings.HasPrefix(got["root"], "/dev/nbd0,ext4,rw") {
		t.Errorf("root = %q; want /dev/nbd0, ext4, rw", got["root"])
	}
	if got["written"] != "written" || got["hostname"] != "vmboard" || got["machineid"] != "0" || got["pid"] != "1" {
		t.Errorf("root state: %v", got)
	}
	if got["build"] != "/dev/vda1,ext4" || got["label"] != "rackboot-build" || got["markers"] != "0" {
		t.Errorf("build disk: build=%q label=%q markers=%q; want a fresh ext4 rackboot-build on /dev/vda1 and no marker", got["build"], got["label"], got["markers"])
	}
	if !strings.Contains(dhcpLog.String(), "rackboot-initramfs") {
		t.Errorf("dnsmasq saw no vendor class rackboot-initramfs")
	}

	// Timings from the init's console lines.
	stepRE := regexp.MustCompile(`rackboot: \[([0-9.]+)\] step=(\S+) status=(\S+) dur=(\S+)`)
	startRE := regexp.MustCompile(`rackboot: \[([0-9.]+)\] init started`)
	srRE := regexp.MustCompile(`rackboot: \[([0-9.]+)\] switch_root to .*`)
	var initAt, srAt float64
	if m := con.find(startRE); m != nil {
		initAt, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := con.find(srRE); m != nil {
		srAt, _ = strconv.ParseFloat(m[1], 64)
	}
	var diskDur time.Duration
	var summary []string
	con.mu.Lock()
	for _, l := range con.lines {
		if m := stepRE.FindStringSubmatch(l); m != nil {
			d, _ := time.ParseDuration(m[4])
			if m[2] == "disk" {
				diskDur = d
			}
			share := 0.0
			if srAt > initAt {
				share = 100 * d.Seconds() / (srAt - initAt)
			}
			summary = append(summary, fmt.Sprintf("%-12s %-6s %8s %5.1f%%", m[2], m[3], d, share))
		}
	}
	con.mu.Unlock()
	initDur := time.Duration((srAt - initAt) * float64(time.Second))
	t.Logf("kernel start to /init: %.3fs; /init to switch_root: %s (%s without the build disk); kernel start to switch_root: %.3fs\n%s",
		initAt, initDur.Round(time.Millisecond), (initDur - diskDur).Round(time.Millisecond), srAt, strings.Join(summary, "\n"))
	if initDur-diskDur > 3*time.Second {
		t.Logf("over the 3 s target: /init to switch_root without the disk took %s", initDur-diskDur)
	}

	// The appliance heard every step.
	reps.mu.Lock()
	defer reps.mu.Unlock()
	var names []string
	for _, s := range reps.steps {
		names = append(names, s.Name+":"+s.Status)
	}
	want := "mount:ok cmdline:ok modules:ok network:ok nbd:ok disk:ok identity:ok switch_root:ok"
	if strings.Join(names, " ") != want {
		t.Errorf("reports = %q; want %q", strings.Join(names, " "), want)
	}
}

func fields(s string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
