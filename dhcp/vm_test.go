//go:build vmtest && linux

// VM tests: real firmware (Debian's iPXE ROM and U-Boot) against the
// server, under QEMU with TCG, on taps in a test network namespace. They
// need root and the packages qemu-system-x86, ipxe-qemu, qemu-system-arm,
// u-boot-qemu and dnsmasq-base; about 70 s in all.
//
//	go test -tags vmtest -v ./dhcp/

package dhcp

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/rackboot/rackboot/internal/eventtest"
	"github.com/rackboot/rackboot/internal/testenv"
)

// TestIPXETiming boots Debian's iPXE ROM (ipxe-qemu) in QEMU (TCG) on a
// tap bridged to a full-mode server, and measures, from QEMU's start,
// when iPXE sends its first DHCPDISCOVER and its DHCPREQUEST, and when it
// asks for its boot file over TFTP (that is, when iPXE has finished
// configuring the interface: DHCP and IPv6 autoconfiguration). It does so
// with and without option 175/176 and router advertisements, and checks
// that each removes its wait.
//
//	go test -tags vmtest -run TestIPXETiming -v ./dhcp/
func TestIPXETiming(t *testing.T) {
	qemu := testenv.LookPath(t, "qemu-system-x86_64")
	// QEMU's default ROM for virtio-net-pci; an explicit romfile= (even
	// this same file) leaves SeaBIOS 1.16.2 not running it at all.
	const rom = "/usr/lib/ipxe/qemu/efi-virtio.rom"
	if _, err := os.Stat(rom); err != nil {
		if os.Getenv("RACKBOOT_REQUIRE_TOOLS") == "1" {
			t.Fatalf("%s (package ipxe-qemu): %v", rom, err)
		}
		t.Skipf("%s (package ipxe-qemu): %v", rom, err)
	}
	type result struct{ discover, request, rrq time.Duration }
	results := make(map[string]result)
	for _, tc := range []struct {
		name       string
		option175  bool
		advertiser bool
	}{
		{"neither", false, false},
		{"option 175 only", true, false},
		{"RA only", false, true},
		{"both", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLAN(t, "srv")
			srv := l.host("srv")
			srv.addAddr(t, "10.77.0.1/24")
			cap := startCapture(t, srv)
			s := fullServer(t, 77, &bootTable{def: Boot{BootFile: "pxelinux.0"}})
			s.noIPXEOption = !tc.option175
			s.Logger = nil
			srv.serve(t, s)
			if tc.advertiser {
				startAdvertiser(t, srv, &Advertiser{Interface: "eth0", Initial: -1})
			}
			serial := startVM(t, l, cap, qemu,
				"-M", "pc,graphics=off", "-accel", "tcg", "-cpu", "max", "-m", "256", "-nographic", "-nodefaults",
				"-serial", "stdio", "-no-reboot", "-boot", "n",
				"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56")
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			r := result{}
			for r.rrq == 0 {
				select {
				case ev := <-cap.events:
					switch {
					case ev.kind == "DISCOVER" && r.discover == 0:
						r.discover = ev.at
						updateTestdata(t, "ipxe-discover.bin", ev.payload)
					case ev.kind == "REQUEST" && r.request == 0:
						r.request = ev.at
						updateTestdata(t, "ipxe-request.bin", ev.payload)
					case ev.kind == "RRQ":
						r.rrq = ev.at
					}
				case <-ctx.Done():
					t.Fatalf("no TFTP request from iPXE; serial console:\n%s", serial.String())
				}
			}
			t.Logf("from QEMU start: DISCOVER %v, REQUEST %v (+%v), TFTP RRQ %v (+%v after DISCOVER)",
				r.discover.Round(10*time.Millisecond), r.request.Round(10*time.Millisecond),
				(r.request - r.discover).Round(10*time.Millisecond), r.rrq.Round(10*time.Millisecond),
				(r.rrq - r.discover).Round(10*time.Millisecond))
			if testing.Verbose() {
				t.Logf("serial console:\n%s", serial.String())
			}
			results[tc.name] = r
			if got := r.request - r.discover; tc.option175 && got > time.Second {
				t.Errorf("with option 175, REQUEST %v after DISCOVER; want < 1s", got)
			} else if !tc.option175 && got < 2*time.Second {
				t.Errorf("without option 175, REQUEST only %v after DISCOVER; expected iPXE's ProxyDHCP wait", got)
			}
			if got := r.rrq - r.request; tc.advertiser && got > time.Second {
				t.Errorf("with router advertisements, boot file requested %v after the DHCPREQUEST; want < 1s", got)
			} else if !tc.advertiser && r.rrq-r.discover < 8*time.Second {
				t.Errorf("without router advertisements, boot file requested %v after DISCOVER; expected iPXE's IPv6 wait", r.rrq-r.discover)
			}
		})
	}
	if a, b := results["neither"], results["both"]; a.rrq != 0 && b.rrq != 0 {
		t.Logf("DISCOVER to boot file request: %v without, %v with option 175 and router advertisements",
			(a.rrq - a.discover).Round(10*time.Millisecond), (b.rrq - b.discover).Round(10*time.Millisecond))
	}
}

// startVM runs QEMU (argv) in l's switch namespace with netdev "n0", a
// tap on the bridge, until the test ends, and returns its console output.
// It restarts c's clock at QEMU's start.
func startVM(t *testing.T, l *lan, c *capture, argv ...string) *eventtest.Buffer {
	t.Helper()
	const tap = "tap0"
	for _, args := range [][]string{
		{"-n", l.sw, "tuntap", "add", tap, "mode", "tap"},
		{"-n", l.sw, "link", "set", tap, "master", "br0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	argv = append(argv, "-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.sw}, argv...)...)
	var serial eventtest.Buffer
	cmd.Stdout, cmd.Stderr = &serial, &serial
	cmd.WaitDelay = 5 * time.Second
	c.start = time.Now()
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	return &serial
}

// TestUBootDHCP boots Debian's U-Boot (u-boot-qemu) for arm64 and armhf
// in QEMU on a tap bridged to a full-mode server, checks that its DHCP
// client is classified as U-Boot, and that its distro boot then asks the
// next server for a file over TFTP.
func TestUBootDHCP(t *testing.T) {
	for _, tc := range []struct {
		name, qemu, bios string
		machine          []string
		vendorClass      string
		arch             uint16
	}{
		{"arm64", "qemu-system-aarch64", "/usr/lib/u-boot/qemu_arm64/u-boot.bin", []string{"-M", "virt", "-cpu", "cortex-a72"}, "U-Boot.armv8", ArchUBootARM64},
		{"arm", "qemu-system-arm", "/usr/lib/u-boot/qemu_arm/u-boot.bin", []string{"-M", "virt,highmem=off", "-cpu", "cortex-a15"}, "U-Boot.armv7", ArchUBootARM32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qemu := testenv.LookPath(t, tc.qemu)
			if _, err := os.Stat(tc.bios); err != nil {
				if os.Getenv("RACKBOOT_REQUIRE_TOOLS") == "1" {
					t.Fatalf("%s (package u-boot-qemu): %v", tc.bios, err)
				}
				t.Skipf("%s (package u-boot-qemu): %v", tc.bios, err)
			}
			l := newLAN(t, "srv")
			srv := l.host("srv")
			srv.addAddr(t, "10.78.0.1/24")
			cap := startCapture(t, srv)
			booter := &bootTable{def: Boot{BootFile: "pxelinux.0"}}
			s := fullServer(t, 78, booter)
			s.Logger = nil
			srv.serve(t, s)
			args := append([]string{qemu}, tc.machine...)
			args = append(args, "-accel", "tcg", "-m", "256", "-bios", tc.bios, "-nographic", "-nodefaults",
				"-serial", "stdio", "-no-reboot", "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:57")
			serial := startVM(t, l, cap, args...)
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			var discover, rrq time.Duration
			var file string
			for rrq == 0 {
				select {
				case ev := <-cap.events:
					switch {
					case ev.kind == "DISCOVER" && discover == 0:
						discover = ev.at
						updateTestdata(t, "uboot-"+tc.name+"-discover.bin", ev.payload)
					case ev.kind == "RRQ":
						rrq = ev.at
						file, _, _ = strings.Cut(string(ev.payload[2:]), "\x00")
					}
				case <-ctx.Done():
					t.Fatalf("no TFTP request from U-Boot; serial console:\n%s", serial.String())
				}
			}
			t.Logf("from QEMU start: DISCOVER %v, TFTP RRQ for %q %v", discover.Round(10*time.Millisecond), file, rrq.Round(10*time.Millisecond))
			if testing.Verbose() {
				t.Logf("serial console:\n%s", serial.String())
			}
			c := booter.clients()[0]
			if c.Firmware != FirmwareUBoot || c.VendorClass != tc.vendorClass || c.Arch != tc.arch {
				t.Errorf("U-Boot classified as %v, vendor class %q, arch %#x; want u-boot, %q, %#x",
					c.Firmware, c.VendorClass, c.Arch, tc.vendorClass, tc.arch)
			}
		})
	}
}

// updateTestdata writes a captured packet to testdata/ when
// RACKBOOT_UPDATE_TESTDATA=1: real iPXE packets for TestRealPackets and
// FuzzHandle's seeds.
func updateTestdata(t *testing.T, name string, b []byte) {
	if os.Getenv("RACKBOOT_UPDATE_TESTDATA") != "1" {
		return
	}
	if err := os.WriteFile("testdata/"+name, b, 0o644); err != nil {
		t.Error(err)
	}
}

// capture watches a host's eth0 for DHCP requests and TFTP read requests
// and reports when they arrive, relative to start.
type capture struct {
	start  time.Time
	events chan captureEvent
}

type captureEvent struct {
	kind    string // DHCP message type, or "RRQ"
	at      time.Duration
	payload []byte // the UDP payload
}

func startCapture(t *testing.T, h *host) *capture {
	t.Helper()
	c := &capture{start: time.Now(), events: make(chan captureEvent, 100)}
	var rc *rawConn
	h.do(t, func() {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if rc, err = openRaw(ifi.Index, etherTypeIPv4, true); err != nil {
			t.Fatal(err)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, maxDatagram)
		for ctx.Err() == nil {
			n, _, err := rc.readFrom(buf, time.Now().Add(100*time.Millisecond))
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					continue
				}
				return
			}
			at := time.Since(c.start)
			_, dst, payload, ok := parseIPv4UDP(buf[:n])
			if !ok {
				continue
			}
			var kind string
			switch dst.Port() {
			case ServerPort:
				if p, err := dhcpv4.FromBytes(payload); err == nil && p.OpCode == dhcpv4.OpcodeBootRequest {
					kind = strings.TrimPrefix(p.MessageType().String(), "DHCP")
				}
			case 69:
				if len(payload) > 2 && payload[0] == 0 && payload[1] == 1 { // TFTP RRQ
					kind = "RRQ"
				}
			}
			if kind != "" {
				select {
				case c.events <- captureEvent{kind, at, append([]byte(nil), payload...)}:
				default:
				}
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		rc.Close()
	})
	return c
}

// TestIPXEProxy boots the iPXE ROM on a network whose addresses come
// from dnsmasq, with our server in proxy mode: iPXE must take its address
// from dnsmasq and its boot file from us.
func TestIPXEProxy(t *testing.T) {
	qemu := testenv.LookPath(t, "qemu-system-x86_64")
	l := newLAN(t, "site", "srv")
	site, srv := l.host("site"), l.host("srv")
	site.addAddr(t, "10.79.0.2/24")
	srv.addAddr(t, "10.79.0.1/24")
	startDnsmasq(t, site, "10.79.0.100,10.79.0.150,255.255.255.0,1h", false)
	cap := startCapture(t, srv)
	booter := &bootTable{def: Boot{BootFile: "proxied.kpxe"}}
	srv.serve(t, &Server{Interface: "eth0", Booter: booter})
	startAdvertiser(t, srv, &Advertiser{Interface: "eth0", Initial: -1})
	serial := startVM(t, l, cap, qemu,
		"-M", "pc,graphics=off", "-accel", "tcg", "-cpu", "max", "-m", "256", "-nographic", "-nodefaults",
		"-serial", "stdio", "-no-reboot", "-boot", "n",
		"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:58")
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var discover, rrq time.Duration
	var file string
	for rrq == 0 {
		select {
		case ev := <-cap.events:
			switch {
			case ev.kind == "DISCOVER" && discover == 0:
				discover = ev.at
			case ev.kind == "RRQ":
				rrq = ev.at
				file, _, _ = strings.Cut(string(ev.payload[2:]), "\x00")
			}
		case <-ctx.Done():
			t.Fatalf("no TFTP request to the proxy server; serial console:\n%s", serial.String())
		}
	}
	t.Logf("from QEMU start: DISCOVER %v, TFTP RRQ to us for %q %v (+%v)", discover.Round(10*time.Millisecond), file,
		rrq.Round(10*time.Millisecond), (rrq - discover).Round(10*time.Millisecond))
	if file != "proxied.kpxe" {
		t.Errorf("iPXE asked for %q; want proxied.kpxe", file)
	}
	out := serial.String()
	if !strings.Contains(out, "net0: 10.79.0.1") || !strings.Contains(out, "Next server: 10.79.0.1") {
		t.Errorf("iPXE console does not show an address from dnsmasq and us as next server:\n%s", out)
	}
	if testing.Verbose() {
		t.Logf("serial console:\n%s", out)
	}
}
