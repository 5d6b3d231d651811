package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"

	rbconfig "github.com/rackboot/rackboot/config"
	"github.com/rackboot/rackboot/internal/testenv"
	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

func TestParseConfig(t *testing.T) {
	t.Parallel()
	c, err := parseConfig([]string{"-quick", "-servers", "nginx,rackboot,nginx", "-rows", "http,dhcp-1"}, new(bytes.Buffer))
	if err != nil {
		t.Fatalf("parseConfig: %v", err)
	}
	got := []any{c.size, c.count, c.handshakes, c.servers, c.selected}
	want := []any{int64(16 << 20), 1, 1000, []string{"rackboot", "nginx"}, []string{"dhcp-1", "http-1", "http-many"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseConfig(-quick ...) mismatch (-want +got):\n%s", diff)
	}
	if got := c.protos(); !cmp.Equal(got, []string{"dhcp", "http"}) {
		t.Errorf("protos() = %q; want dhcp, http", got)
	}
	c, err = parseConfig([]string{"-quick", "-size", "64M", "-count", "3"}, new(bytes.Buffer))
	if err != nil || c.size != 64<<20 || c.count != 3 || len(c.selected) != len(rowKeys()) {
		t.Errorf("parseConfig(-quick -size 64M -count 3) = size %d, count %d, rows %q, %v; want 64 MiB, 3, all rows", c.size, c.count, c.selected, err)
	}
	for _, args := range [][]string{
		{"-servers", "atftpd"},
		{"-rows", "nbd"},
		{"-handshakes", "10"}, // fewer than -outstanding
		{"-handshakes", "70000"},
		{"-mtu", "100"},
		{"extra"},
	} {
		if _, err := parseConfig(args, new(bytes.Buffer)); err == nil {
			t.Errorf("parseConfig(%q) succeeded; want an error", args)
		}
	}
}

func TestUDPFrame(t *testing.T) {
	t.Parallel()
	src := netip.MustParseAddrPort("10.88.0.2:68")
	dst := netip.MustParseAddrPort("255.255.255.255:67")
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	for _, payload := range [][]byte{[]byte("odd"), bytes.Repeat([]byte{0xab}, 300)} {
		f := udpFrame(broadcastMAC, mac, src, dst, payload)
		gotSrc, gotDst, gotPayload, ok := parseUDPFrame(f)
		if !ok || gotSrc != src || gotDst != dst || !bytes.Equal(gotPayload, payload) {
			t.Errorf("parseUDPFrame(udpFrame(...)) = %v, %v, %q, %v; want %v, %v, %q", gotSrc, gotDst, gotPayload, ok, src, dst, payload)
		}
		ip := f[ethHeaderLen : ethHeaderLen+ipv4HeaderLen]
		if c := checksum(0, ip); c != 0 {
			t.Errorf("IPv4 header checksum does not verify: %#04x", c)
		}
		// UDP: the sum over pseudo-header and datagram is all ones.
		udp := f[ethHeaderLen+ipv4HeaderLen:]
		pseudo := append(append(append([]byte{}, ip[12:20]...), 0, protoUDP), byte(len(udp)>>8), byte(len(udp)))
		if c := checksum(0, append(pseudo, udp...)); c != 0 {
			t.Errorf("UDP checksum does not verify: %#04x", c)
		}
	}
	frag := udpFrame(broadcastMAC, mac, src, dst, []byte("x"))
	binary.BigEndian.PutUint16(frag[ethHeaderLen+6:], 0x2000) // more fragments
	if _, _, _, ok := parseUDPFrame(frag); ok {
		t.Error("parseUDPFrame(fragment) succeeded; want ok false")
	}
	if _, _, _, ok := parseUDPFrame(frag[:30]); ok {
		t.Error("parseUDPFrame(short) succeeded; want ok false")
	}
}

func TestClientMessage(t *testing.T) {
	t.Parallel()
	c := newClient(0x1234, 70000)
	if other := newClient(0x1234, 70001); bytes.Equal(other.mac, c.mac) || other.xid == c.xid {
		t.Errorf("clients 70000 and 70001 share a MAC or xid: %v %v, %#x %#x", c.mac, other.mac, c.xid, other.xid)
	}
	_, dst, payload, ok := parseUDPFrame(c.message(dhcpv4.MessageTypeDiscover))
	if !ok || dst.Port() != dhcpServerUDP {
		t.Fatalf("DISCOVER frame: ok %v, dst %v", ok, dst)
	}
	m, err := dhcpv4.FromBytes(payload)
	if err != nil {
		t.Fatalf("decoding DISCOVER: %v", err)
	}
	got := []any{m.MessageType(), m.ClientHWAddr.String(), binary.BigEndian.Uint32(m.TransactionID[:]), m.IsBroadcast(), m.ClassIdentifier()}
	want := []any{dhcpv4.MessageTypeDiscover, c.mac.String(), c.xid, true, pxeVendorClass}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DISCOVER mismatch (-want +got):\n%s", diff)
	}
}

func TestParseRRQAnswer(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		pkt  string
		want int
		err  bool
	}{
		"oack":           {pkt: "\x00\x06tsize\x001000\x00blksize\x001468\x00", want: 1468},
		"oack upper":     {pkt: "\x00\x06BLKSIZE\x0065464\x00", want: 65464},
		"oack no size":   {pkt: "\x00\x06tsize\x001000\x00", want: 512},
		"data":           {pkt: "\x00\x03\x00\x01hello", want: 512},
		"error":          {pkt: "\x00\x05\x00\x01File not found\x00", err: true},
		"bad blksize":    {pkt: "\x00\x06blksize\x00x\x00", err: true},
		"short":          {pkt: "\x00", err: true},
		"unknown opcode": {pkt: "\x00\x09", err: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseRRQAnswer([]byte(tc.pkt))
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("parseRRQAnswer(%q) = %d, %v; want %d, error %v", tc.pkt, got, err, tc.want, tc.err)
			}
		})
	}
}

// TestServerCommands checks the configuration every server is started
// with: rackboot's must pass rackboot's own validation, Kea's must be JSON.
func TestServerCommands(t *testing.T) {
	t.Parallel()
	for name, spec := range specs() {
		for _, proto := range spec.protos {
			t.Run(name+"/"+proto, func(t *testing.T) {
				dir := t.TempDir()
				argv, _, err := spec.command(startInfo{bin: "/bin/" + name, proto: proto, dir: dir, tree: dir, image: filepath.Join(dir, "min.img")})
				if err != nil || len(argv) == 0 || argv[0] != "/bin/"+name {
					t.Fatalf("command = %q, %v", argv, err)
				}
				switch name {
				case "rackboot":
					data, err := os.ReadFile(argv[len(argv)-1])
					if err != nil {
						t.Fatal(err)
					}
					cfg, err := rbconfig.Parse("rackboot.yaml", data, dir)
					if err != nil {
						t.Fatalf("config.Parse:\n%s\n%v", data, err)
					}
					if wantMode := map[bool]string{true: "full", false: "off"}[proto == "dhcp"]; cfg.DHCP.Mode != wantMode {
						t.Errorf("dhcp.mode = %q; want %q", cfg.DHCP.Mode, wantMode)
					}
				case "kea", "kea-mt":
					data, err := os.ReadFile(argv[len(argv)-1])
					if err != nil {
						t.Fatal(err)
					}
					if !json.Valid(data) {
						t.Errorf("Kea configuration is not JSON:\n%s", data)
					}
				}
			})
		}
	}
}

func TestReportTable(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig([]string{"-quick", "-rows", "dhcp-1,http-1"}, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	res := newResults(cfg.servers)
	for _, v := range []float64{100, 300, 200} {
		res.set("dhcp-1", "rackboot", v)
	}
	res.set("dhcp-1", "dnsmasq", 150)
	res.set("dhcp-1", "kea", 250)
	res.set("http-1", "nginx", 1000)
	rep := &report{cfg: cfg, rows: cfg.rows(), res: res}
	got := rep.table()
	want := [][]string{
		{"measurement", "unit", "rackboot", "dnsmasq", "kea", "kea-mt", "tftpd-hpa", "nginx", "best ref", "rackboot/best", "target"},
		{"DHCP handshakes (DORA), 1 outstanding", "handshakes/s", "200", "150", "250", "n/a", "-", "-", "250", "0.80x", "MISSED"},
		{"HTTP 16 MiB, 1 client", "MB/s", "n/a", "-", "-", "-", "-", "1000", "1000", "n/a", "n/a"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("table mismatch (-want +got):\n%s", diff)
	}
	res.setCPU("dhcp-1", "kea", 140)
	if got, want := rep.cpuTable()[1], []string{"DHCP handshakes (DORA), 1 outstanding", "µs/handshake", "n/a", "n/a", "140", "n/a", "-", "-"}; !cmp.Equal(got, want) {
		t.Errorf("cpuTable()[1] = %q; want %q", got, want)
	}
	var text, md bytes.Buffer
	rep.writeText(&text)
	rep.writeMarkdown(&md)
	if !strings.Contains(text.String(), "0.80x  MISSED") || !strings.Contains(md.String(), "| 0.80x | MISSED |") {
		t.Errorf("reports lack the ratio:\n%s\n%s", text.String(), md.String())
	}
}

// TestCPUMeter measures a process group whose busy child exits before the
// meter stops.
func TestCPUMeter(t *testing.T) {
	t.Parallel()
	sh := testenv.LookPath(t, "sh")
	cmd := exec.Command(sh, "-c", `sh -c 'end=$(($(date +%s%N) + 300000000)); while [ $(date +%s%N) -lt $end ]; do :; done'; sleep 0.2`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := (&group{Group: benchkit.Group{PGID: cmd.Process.Pid}}).meter()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := m.end(); got < 150*time.Millisecond || got > 2*time.Second {
		t.Errorf("cpuMeter = %v; want about 300ms", got)
	}
}

// TestDHCPLoad runs the load generator against dnsmasq in a test network,
// and checks that the namespaces are gone afterwards.
func TestDHCPLoad(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.LookPath(t, "ip")
	dnsmasq := testenv.LookPath(t, "dnsmasq")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	tb, err := newTestbed(ctx, 1500)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := tb.close(); err != nil {
			t.Errorf("removing the test network: %v", err)
		}
		for _, n := range []*netNS{tb.srv, tb.cli} {
			if _, err := os.Stat(n.path()); err == nil {
				t.Errorf("namespace %s is still there", n.name)
			}
		}
	}()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	argv, env, err := specs()["dnsmasq"].command(startInfo{bin: dnsmasq, proto: "dhcp", dir: dir, tree: dir})
	if err != nil {
		t.Fatal(err)
	}
	g, err := startServer(tb.srv, argv, env, dir, filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	load, err := openDHCPLoad(tb.cli, clientIf)
	if err != nil {
		t.Fatal(err)
	}
	defer load.close()
	if err := poll(ctx, g, readyTimeout, "DHCP offer", func() error { return load.probe(ctx) }); err != nil {
		t.Fatal(err)
	}
	r := load.run(ctx, 40, 8)
	if r.done != 40 || r.failed != 0 || r.rate() <= 0 {
		t.Errorf("run(40, 8) = %d done, %d failed (%v), rate %.0f/s; want 40 done", r.done, r.failed, r.firstErr, r.rate())
	}
	leases, err := os.ReadFile(filepath.Join(dir, "dnsmasq.leases"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(leases), "\n"); n != 40 {
		t.Errorf("dnsmasq holds %d leases; want 40:\n%s", n, leases)
	}
}
