package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rackboot/rackboot/internal/eventtest"
	"github.com/rackboot/rackboot/internal/netns"
	"github.com/rackboot/rackboot/internal/testenv"
)

// rack is an appliance in a network namespace with boards beside it.
type rack struct {
	dir    string
	config string
	srv    *netns.Host
	boards []*netns.Host
}

const rackYAML = `state_dir: state
log_level: debug
address: 10.77.0.1
nbd:
  listen: 10.77.0.1:10809
http:
  listen: 10.77.0.1:8080
tftp:
  listen: 10.77.0.1:69
images:
  - name: minimal
    path: min.img
boot:
  tree: tree
  kernels:
    amd64: {kernel: amd64/vmlinuz, initrd: amd64/initrd.img}
boards:
  - {name: board-a, mac: "52:54:00:7b:00:0a", arch: amd64, image: minimal}
  - {name: board-b, mac: "52:54:00:7b:00:0b", arch: amd64, image: minimal}
`

func newRack(t *testing.T, withIPs bool) *rack {
	t.Helper()
	for _, tool := range []string{"curl", "nbdinfo", "qemu-io"} {
		testenv.LookPath(t, tool)
	}
	n := netns.New(t)
	r := &rack{dir: t.TempDir()}
	r.srv = n.AddHost(netns.MAC(1), netip.MustParsePrefix("10.77.0.1/24"))
	var ipA, ipB netip.Prefix
	if withIPs {
		ipA, ipB = netip.MustParsePrefix("10.77.0.10/24"), netip.MustParsePrefix("10.77.0.11/24")
	}
	r.boards = []*netns.Host{n.AddHost(netns.MAC(0x0a), ipA), n.AddHost(netns.MAC(0x0b), ipB)}
	os.MkdirAll(filepath.Join(r.dir, "tree", "amd64"), 0o755)
	os.WriteFile(filepath.Join(r.dir, "tree", "amd64", "vmlinuz"), bytes.Repeat([]byte("K"), 3<<20), 0o644)
	os.WriteFile(filepath.Join(r.dir, "tree", "amd64", "initrd.img"), bytes.Repeat([]byte("I"), 1<<20), 0o644)
	randomFile(t, filepath.Join(r.dir, "min.img"), 4<<20, 9)
	r.config = filepath.Join(r.dir, "rackboot.yaml")
	os.WriteFile(r.config, []byte(rackYAML), 0o644)
	return r
}

// start runs `rackboot serve` in the appliance's namespace.
func (r *rack) start(t *testing.T) *server {
	t.Helper()
	cmd := r.srv.Command(t.Context(), rackbootBin, "serve", "--config", r.config)
	return startCommand(t, cmd, func() bool {
		return r.srv.Command(t.Context(), "curl", "-s", "-o", "/dev/null", "http://10.77.0.1:8080/").Run() == nil
	})
}

var tokenRE = regexp.MustCompile(`rackboot\.token=([0-9a-f]{32})`)

// bootConfig fetches a boot config from board i and returns its token.
func (r *rack) bootConfig(t *testing.T, i int, url string) string {
	t.Helper()
	out := r.boards[i].Run(t, "curl", "-fsS", url)
	m := tokenRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no token in the boot config from %s:\n%s", url, out)
	}
	return m[1]
}

// TestBoardIsolation checks, with real clients inside network namespaces,
// that a board gets its own boot config and NBD root only, and that a new
// boot invalidates the previous one.
func TestBoardIsolation(t *testing.T) {
	r := newRack(t, true)
	srv := r.start(t)
	a, b := r.boards[0], r.boards[1]
	cfgA := "http://10.77.0.1:8080/pxelinux.cfg/01-52-54-00-7b-00-0a"
	tok1 := r.bootConfig(t, 0, cfgA)
	nbdURI := func(tok string) string { return "nbd://10.77.0.1:10809/" + tok }

	a.Run(t, "nbdinfo", nbdURI(tok1))
	a.Run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xa1 0 64k", nbdURI(tok1))

	// Board B can neither fetch A's config nor attach A's root.
	if out, err := b.Command(t.Context(), "curl", "-fsS", cfgA).CombinedOutput(); err == nil {
		t.Errorf("board B fetched board A's config:\n%s", out)
	}
	if out, err := b.Command(t.Context(), "nbdinfo", nbdURI(tok1)).CombinedOutput(); err == nil {
		t.Errorf("board B attached board A's root:\n%s", out)
	}
	// Over TFTP too.
	if out, err := b.Command(t.Context(), "curl", "-fsS", "--max-time", "20", "tftp://10.77.0.1/pxelinux.cfg/01-52-54-00-7b-00-0a").CombinedOutput(); err == nil {
		t.Errorf("board B fetched board A's config over TFTP:\n%s", out)
	}
	tokB := r.bootConfig(t, 1, "tftp://10.77.0.1/pxelinux.cfg/01-52-54-00-7b-00-0b")
	if out, err := a.Command(t.Context(), "nbdinfo", nbdURI(tokB)).CombinedOutput(); err == nil {
		t.Errorf("board A attached board B's root:\n%s", out)
	}

	// Root on board A forges a TFTP request for a boot config from B's
	// address. The answer goes to B, which doesn't acknowledge it (here
	// a socket that only listens): B's boot, token and layer stay.
	b.Run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xb2 0 64k", nbdURI(tokB))
	forged := r.forgedConfigRequest(t, netip.MustParseAddrPort("10.77.0.11:40000"))
	if forged == tokB {
		t.Fatal("a forged request got B's current token")
	}
	b.Run(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0xb2 0 64k", nbdURI(tokB))
	if out, err := b.Command(t.Context(), "nbdinfo", nbdURI(forged)).CombinedOutput(); err == nil {
		t.Errorf("the token of an unacknowledged config attaches:\n%s", out)
	}

	// A restart of rackboot (even a crash) keeps the boot and its layer.
	srv.stop(syscall.SIGKILL)
	srv = r.start(t)
	a.Run(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0xa1 0 64k", nbdURI(tok1))

	// A new boot: the old token is dead, the new root is pristine.
	tok2 := r.bootConfig(t, 0, "http://10.77.0.1:8080/pxelinux.cfg/default")
	if tok2 == tok1 {
		t.Fatal("new boot, same token")
	}
	if out, err := a.Command(t.Context(), "nbdinfo", nbdURI(tok1)).CombinedOutput(); err == nil {
		t.Errorf("the previous boot's export still attaches:\n%s", out)
	}
	out, err := a.Command(t.Context(), "qemu-io", "-f", "raw", "-r", "-c", "read -P 0xa1 0 64k", nbdURI(tok2)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Pattern verification failed") {
		t.Errorf("the new boot sees the previous boot's writes: %v\n%s", err, out)
	}
	srv.stop(syscall.SIGTERM)
	if sessions := r.sessions(t); strings.Count(sessions, "board-a@") != 1 || strings.Contains(sessions, tok1[:8]) || strings.Contains(sessions, tok2[:8]) {
		t.Errorf("layers on disk after the second boot (want one for board-a, naming no token):\n%s", sessions)
	}
}

// forgedConfigRequest sends, from board 0, a TFTP request for
// pxelinux.cfg/default whose source is board 1's address from, and returns
// the token in the answer, which board 1 receives (on a socket at from)
// and never acknowledges.
func (r *rack) forgedConfigRequest(t *testing.T, from netip.AddrPort) string {
	t.Helper()
	var victim net.PacketConn
	if err := r.boards[1].Do(func() (err error) {
		victim, err = net.ListenPacket("udp4", from.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	rrq := []byte("\x00\x01pxelinux.cfg/default\x00octet\x00")
	if err := r.boards[0].Do(func() error {
		return sendForgedUDP(from, netip.MustParseAddrPort("10.77.0.1:69"), rrq)
	}); err != nil {
		t.Fatal(err)
	}
	victim.SetReadDeadline(time.Now().Add(eventtest.Within))
	buf := make([]byte, 1024)
	n, _, err := victim.ReadFrom(buf)
	if err != nil {
		t.Fatalf("board B got no answer to the forged request: %v", err)
	}
	m := tokenRE.FindSubmatch(buf[:n])
	if buf[1] != 3 || m == nil {
		t.Fatalf("answer to the forged request: %q; want DATA with a boot config", buf[:n])
	}
	return string(m[1])
}

// sendForgedUDP sends a UDP datagram with any source address, through a
// raw socket in the calling thread's namespace.
func sendForgedUDP(src, dst netip.AddrPort, payload []byte) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45 // IPv4, 20-byte header; the kernel fills in the checksum
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[12:], s4[:])
	copy(pkt[16:], d4[:])
	binary.BigEndian.PutUint16(pkt[20:], src.Port())
	binary.BigEndian.PutUint16(pkt[22:], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload))) // no UDP checksum: allowed over IPv4
	copy(pkt[28:], payload)
	return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: d4})
}

func (r *rack) sessions(t *testing.T) string {
	out, err := exec.Command(rackbootBin, "nbd", "--state", filepath.Join(r.dir, "state"), "--sessions").CombinedOutput()
	if err != nil {
		t.Fatalf("listing sessions: %v\n%s", err, out)
	}
	return fmt.Sprint(string(out))
}

const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	ip addr add "$ip/$mask" dev "$interface"
	echo "ip=$ip hostname=$hostname boot_file=$boot_file siaddr=$siaddr" > "$RESULT"
	;;
esac
`

// dhcpBoot runs busybox udhcpc on board i as PXE firmware would identify
// itself, configures the address and returns what it was told.
func (r *rack) dhcpBoot(t *testing.T, i int) string {
	t.Helper()
	script := filepath.Join(r.dir, "udhcpc.sh")
	os.WriteFile(script, []byte(udhcpcScript), 0o755)
	result := filepath.Join(r.dir, fmt.Sprintf("lease%d", i))
	cmd := r.boards[i].Command(t.Context(), "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
		"-V", "PXEClient:Arch:00000:UNDI:002001", "-s", script)
	cmd.Env = append(os.Environ(), "RESULT="+result)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("udhcpc on board %d: %v\n%s", i, err, out)
	}
	b, err := os.ReadFile(result)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestRackDHCP boots boards' network side for real: DHCP from `rackboot
// serve` in full mode (busybox udhcpc as PXE firmware), then the boot
// config and kernel over TFTP, and checks the boot timeline the API shows.
func TestRackDHCP(t *testing.T) {
	testenv.LookPath(t, "busybox")
	r := newRack(t, false)
	cfg, _ := os.ReadFile(r.config)
	cfg = bytes.Replace(cfg, []byte("boards:\n  - {name: board-a, mac: \"52:54:00:7b:00:0a\", arch: amd64, image: minimal}"),
		[]byte("dhcp: {mode: full, interfaces: [eth0], range_start: 10.77.0.100, range_end: 10.77.0.150, probe: false}\nboards:\n  - {name: board-a, mac: \"52:54:00:7b:00:0a\", arch: amd64, image: minimal, ip: 10.77.0.10}"), 1)
	os.WriteFile(r.config, cfg, 0o644)
	srv := r.start(t)

	if got, want := r.dhcpBoot(t, 0), "ip=10.77.0.10 hostname=board-a boot_file=lpxelinux.0 siaddr=10.77.0.1"; got != want {
		t.Errorf("board A's lease: %s; want %s", got, want)
	}
	got := r.dhcpBoot(t, 1)
	if !regexp.MustCompile(`^ip=10\.77\.0\.1[0-4][0-9] hostname=board-b boot_file=lpxelinux\.0`).MatchString(got) {
		t.Errorf("board B's lease: %s; want one from the dynamic range", got)
	}
	r.bootConfig(t, 0, "tftp://10.77.0.1/pxelinux.cfg/01-52-54-00-7b-00-0a")
	r.boards[0].Run(t, "curl", "-fsS", "-o", "/dev/null", "--tftp-blksize", "1468", "tftp://10.77.0.1/amd64/vmlinuz")
	api := r.boards[0].Run(t, "curl", "-fsS", "http://10.77.0.1:8080/api/v1/boots?limit=1")
	for _, want := range []string{`"board": "board-a"`, `"ip": "10.77.0.10"`, `"name": "ACK 10.77.0.10 lpxelinux.0"`, `"kind": "config"`, `"name": "amd64/vmlinuz"`, `"bytes": 3145728`} {
		if !strings.Contains(api, want) {
			t.Errorf("boot timeline lacks %s:\n%s", want, api)
		}
	}
	srv.stop(syscall.SIGTERM)

	// The leases survive a restart: board A renews the same address.
	srv = r.start(t)
	r.boards[0].Run(t, "ip", "addr", "flush", "dev", "eth0")
	if got := r.dhcpBoot(t, 0); !strings.HasPrefix(got, "ip=10.77.0.10 ") {
		t.Errorf("board A after a restart: %s", got)
	}
	srv.stop(syscall.SIGTERM)
}

// TestRefusesBesideAnotherDHCPServer runs dnsmasq on the boot network:
// `rackboot serve` in full mode must refuse to start, naming it.
func TestRefusesBesideAnotherDHCPServer(t *testing.T) {
	dnsmasq := testenv.LookPath(t, "dnsmasq")
	r := newRack(t, false)
	other := r.boards[1] // plays the site's DHCP server
	other.Run(t, "ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
	cmd := other.Command(t.Context(), dnsmasq, "--no-daemon", "--port=0", "--no-resolv", "--no-hosts",
		"--dhcp-range=10.77.0.200,10.77.0.220,1h", "--no-ping", "--dhcp-leasefile="+filepath.Join(r.dir, "dnsmasq.leases"), "--pid-file=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	cfg, _ := os.ReadFile(r.config)
	cfg = append(cfg, []byte("dhcp: {mode: full, interfaces: [eth0], range_start: 10.77.0.100, range_end: 10.77.0.150}\n")...)
	os.WriteFile(r.config, cfg, 0o644)
	out, err := r.srv.Command(t.Context(), rackbootBin, "serve", "--config", r.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "10.77.0.2") {
		t.Errorf("serve beside dnsmasq: %v; want a refusal naming 10.77.0.2:\n%s", err, out)
	}
}

// importImage imports a random raw image of one version into the rack's
// catalog with rackboot image import, and returns its NAME@VERSION.
func (r *rack) importImage(t *testing.T, seed uint64) (string, []byte) {
	t.Helper()
	dir := filepath.Join(r.dir, fmt.Sprintf("v%d", seed))
	os.MkdirAll(dir, 0o755)
	img := randomFile(t, filepath.Join(dir, "root.img"), 4<<20, seed)
	sum := sha256.Sum256(img)
	manifest := fmt.Sprintf(`{"name": "testimg", "arch": "amd64", "suite": "bookworm", "epoch": %d, "sha256": "%x", "size": %d, "packages": []}`,
		1700000000+seed*86400, sum, len(img))
	os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(manifest), 0o644)
	os.WriteFile(filepath.Join(dir, "vmlinuz"), fmt.Appendf(nil, "kernel of v%d", seed), 0o644)
	os.WriteFile(filepath.Join(dir, "initrd"), fmt.Appendf(nil, "initrd of v%d", seed), 0o644)
	out := runTool(t, rackbootBin, "image", "import", "--state", filepath.Join(r.dir, "state"), "--name", "testimg",
		"--manifest", filepath.Join(dir, "manifest.json"), "--kernel", "amd64="+filepath.Join(dir, "vmlinuz"),
		"--initrd", "amd64="+filepath.Join(dir, "initrd"), filepath.Join(dir, "root.img"))
	m := regexp.MustCompile(`testimg@[0-9]{8}-[0-9a-f]{12}`).FindString(out)
	if m == "" {
		t.Fatalf("no version in the import output:\n%s", out)
	}
	return m, img
}

// TestImageVersionsPerBoot checks that a boot keeps the image version
// active when it started: activating v2 leaves a running boot on v1's
// bytes, and the next boot gets v2 with v2's kernel.
func TestImageVersionsPerBoot(t *testing.T) {
	for _, tool := range []string{"nbdcopy"} {
		testenv.LookPath(t, tool)
	}
	r := newRack(t, true)
	v1, img1 := r.importImage(t, 1)
	cfg, _ := os.ReadFile(r.config)
	cfg = bytes.ReplaceAll(cfg, []byte("image: minimal}"), []byte("image: testimg}"))
	os.WriteFile(r.config, cfg, 0o644)
	srv := r.start(t)
	a := r.boards[0]
	nbdURI := func(tok string) string { return "nbd://10.77.0.1:10809/" + tok }
	readRoot := func(tok string) []byte {
		out := filepath.Join(r.dir, "root-"+tok[:8])
		a.Run(t, "nbdcopy", nbdURI(tok), out)
		b, _ := os.ReadFile(out)
		return b
	}

	cfg1 := a.Run(t, "curl", "-fsS", "http://10.77.0.1:8080/pxelinux.cfg/default")
	tok1 := tokenRE.FindStringSubmatch(cfg1)[1]
	if !bytes.Equal(readRoot(tok1), img1) {
		t.Fatal("boot 1 doesn't read v1")
	}
	v2, img2 := r.importImage(t, 2)
	runTool(t, rackbootBin, "image", "activate", "--state", filepath.Join(r.dir, "state"), v2)

	if !bytes.Equal(readRoot(tok1), img1) {
		t.Error("the running boot changed image when v2 was activated")
	}
	out := runTool(t, rackbootBin, "image", "gc", "--state", filepath.Join(r.dir, "state"))
	if strings.Contains(out, v1) {
		t.Errorf("gc deleted %s, in use by a running boot:\n%s", v1, out)
	}

	cfg2 := a.Run(t, "curl", "-fsS", "http://10.77.0.1:8080/pxelinux.cfg/default")
	tok2 := tokenRE.FindStringSubmatch(cfg2)[1]
	if !bytes.Equal(readRoot(tok2), img2) {
		t.Error("the next boot doesn't read v2")
	}
	kernel := regexp.MustCompile(`KERNEL (\S+)`).FindStringSubmatch(cfg2)[1]
	if got := a.Run(t, "curl", "-fsS", "http://10.77.0.1:8080/"+kernel); got != "kernel of v2" {
		t.Errorf("boot 2's kernel %s is %q; want v2's", kernel, got)
	}
	srv.stop(syscall.SIGTERM)
	// Boot 1 is over and its layer gone: v1 can go now.
	out = runTool(t, rackbootBin, "image", "gc", "--state", filepath.Join(r.dir, "state"))
	if !strings.Contains(out, v1) || strings.Contains(out, v2) {
		t.Errorf("gc after boot 1 ended:\n%s\nwant %s deleted and %s kept", out, v1, v2)
	}
}
