//go:build linux

package dhcp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/rackboot/rackboot/internal/testenv"
)

// Interop tests: real DHCP clients and servers in network namespaces (see
// newLAN), against a Server running in this process.

// fullServer returns a full-mode server for 10.N.0.0/24 on eth0, with the
// server at .1, a pool of .100-.199, router .254 and DNS .53.
func fullServer(t *testing.T, net8 int, b Booter) *Server {
	p := func(s string) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("10.%d.0.%s", net8, s)) }
	return &Server{
		Mode:       ModeFull,
		Interface:  "eth0",
		ServerIP:   p("1"),
		Subnet:     netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/24", net8)),
		RangeStart: p("100"),
		RangeEnd:   p("199"),
		Router:     p("254"),
		DNS:        []netip.Addr{p("53")},
		Booter:     b,
		SkipProbe:  true,
		Logger:     testLogger(t),
	}
}

// writeScript writes an executable shell script that appends its
// environment to dir/<first argument>.env.
func writeScript(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "script")
	script := fmt.Sprintf("#!/bin/sh\nenv >> %s/\"${1:-$reason}\".env\n", dir)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// readEnv parses a file of NAME=value lines.
func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("client script output: %v", err)
	}
	env := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

// pick returns the named entries of env.
func pick(env map[string]string, keys ...string) map[string]string {
	out := make(map[string]string)
	for _, k := range keys {
		out[k] = env[k]
	}
	return out
}

// TestUdhcpc: busybox udhcpc, claiming to be a BIOS PXE client, gets its
// reservation and the PXE options. The server runs its probe first (and
// must find no other server).
func TestUdhcpc(t *testing.T) {
	l := newLAN(t, "srv", "cli")
	busybox := testenv.LookPath(t, "busybox")
	srv, cli := l.host("srv"), l.host("cli")
	srv.addAddr(t, "10.71.0.1/24")
	booter := &bootTable{}
	booter.set(cli.mac, Boot{
		IP:             netip.MustParseAddr("10.71.0.42"),
		Hostname:       "board-7",
		BootFile:       "lpxelinux.0",
		PXELinuxConfig: "pxelinux.cfg/board-7",
		PathPrefix:     "/tftp/",
	})
	s := fullServer(t, 71, booter)
	s.SkipProbe = false
	s.ProbeTimeout = 1500 * time.Millisecond
	start := time.Now()
	srv.serve(t, s)
	t.Logf("server up after %v (probe included)", time.Since(start).Round(time.Millisecond))

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := cli.command(ctx, busybox, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
		"-s", writeScript(t, dir), "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000",
		"-O", "7", "-O", "tftp", "-O", "bootfile", "-O", "pxeconffile", "-O", "pxepathprefix")
	start = time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	t.Logf("udhcpc bound after %v", time.Since(start).Round(time.Millisecond))
	env := readEnv(t, filepath.Join(dir, "bound.env"))
	got := pick(env, "ip", "subnet", "router", "dns", "hostname", "siaddr", "boot_file", "serverid", "lease", "broadcast", "opt7", "tftp", "bootfile", "pxeconffile", "pxepathprefix")
	want := map[string]string{
		"ip":            "10.71.0.42",
		"subnet":        "255.255.255.0",
		"router":        "10.71.0.254",
		"dns":           "10.71.0.53",
		"hostname":      "board-7",
		"siaddr":        "10.71.0.1",
		"boot_file":     "lpxelinux.0",
		"serverid":      "10.71.0.1",
		"lease":         "3600",
		"broadcast":     "10.71.0.255",
		"opt7":          "0a470001", // log server 10.71.0.1
		"tftp":          "10.71.0.1",
		"bootfile":      "lpxelinux.0",
		"pxeconffile":   "pxelinux.cfg/board-7",
		"pxepathprefix": "/tftp/",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("udhcpc saw (-want +got):\n%s", diff)
	}
	if l, ok := s.LeaseFor(cli.mac); !ok || l.IP.String() != "10.71.0.42" || l.Hostname != "board-7" {
		t.Errorf("LeaseFor(%v) = %v, %v", cli.mac, l, ok)
	}
	c := booter.clients()[0]
	if c.Firmware != FirmwareBIOS || c.Arch != 0 || c.Interface != "eth0" {
		t.Errorf("udhcpc classified as %v (arch %d, interface %q); want bios, 0, eth0", c.Firmware, c.Arch, c.Interface)
	}
}

// TestUdhcpcSmallBuffer: busybox udhcpc takes a 576-byte datagram (it
// sends option 57 = 576, and reads into a buffer not much larger). A
// board with long PXELINUX paths and name would make a 764-byte OFFER;
// the server drops the options least needed until the reply fits, and
// udhcpc binds with the configuration file it asked for.
func TestUdhcpcSmallBuffer(t *testing.T) {
	l := newLAN(t, "srv", "cli")
	busybox := testenv.LookPath(t, "busybox")
	srv, cli := l.host("srv"), l.host("cli")
	srv.addAddr(t, "10.73.0.1/24")
	conf := "pxelinux.cfg/" + strings.Repeat("c", 187)
	booter := &bootTable{}
	booter.set(cli.mac, Boot{
		IP:             netip.MustParseAddr("10.73.0.42"),
		Hostname:       "board-" + strings.Repeat("n", 54),
		BootFile:       "lpxelinux.0",
		PXELinuxConfig: conf,
		PathPrefix:     "/" + strings.Repeat("p", 199),
	})
	srv.serve(t, fullServer(t, 73, booter))

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := cli.command(ctx, busybox, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
		"-s", writeScript(t, dir), "-O", "pxeconffile", "-O", "pxepathprefix")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	env := readEnv(t, filepath.Join(dir, "bound.env"))
	got := pick(env, "ip", "subnet", "serverid", "lease", "boot_file", "pxeconffile", "pxepathprefix", "hostname")
	want := map[string]string{
		"ip":            "10.73.0.42",
		"subnet":        "255.255.255.0",
		"serverid":      "10.73.0.1",
		"lease":         "3600",
		"boot_file":     "lpxelinux.0",
		"pxeconffile":   conf,
		"pxepathprefix": "", // dropped: the least needed of what it asked for
		"hostname":      "", // dropped before it
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("udhcpc saw (-want +got):\n%s", diff)
	}
}

// TestConflictCheckARP: a host on the segment uses the first pool address
// without a lease (a static address inside the pool). With the conflict
// check on, the server's ARP probe finds it, withholds the address, and
// busybox udhcpc gets the next one.
func TestConflictCheckARP(t *testing.T) {
	l := newLAN(t, "srv", "cli", "squat")
	busybox := testenv.LookPath(t, "busybox")
	srv, cli, squat := l.host("srv"), l.host("cli"), l.host("squat")
	srv.addAddr(t, "10.74.0.1/24")
	squat.addAddr(t, "10.74.0.100/24")
	s := fullServer(t, 74, &bootTable{})
	s.ConflictWait = 300 * time.Millisecond
	var logs bytes.Buffer
	var logMu sync.Mutex
	s.Logger = slog.New(slog.NewTextHandler(&lockedWriter{mu: &logMu, w: io.MultiWriter(&logs, t.Output())}, nil))
	srv.serve(t, s)

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := cli.command(ctx, busybox, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-s", writeScript(t, dir))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	if ip := readEnv(t, filepath.Join(dir, "bound.env"))["ip"]; ip != "10.74.0.101" {
		t.Errorf("udhcpc bound %s; want 10.74.0.101, the first pool address nobody answers for", ip)
	}
	logMu.Lock()
	defer logMu.Unlock()
	for _, want := range []string{`msg="pool address in use by another host; withheld"`, "ip=10.74.0.100 host=" + squat.mac.String()} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("server log lacks %q", want)
		}
	}
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestDhclient: ISC dhclient gets its reservation and the boot options.
func TestDhclient(t *testing.T) {
	l := newLAN(t, "srv", "cli")
	dhclient := testenv.LookPath(t, "dhclient")
	srv, cli := l.host("srv"), l.host("cli")
	srv.addAddr(t, "10.72.0.1/24")
	booter := &bootTable{}
	booter.set(cli.mac, Boot{
		IP:             netip.MustParseAddr("10.72.0.43"),
		Hostname:       "board-8",
		BootFile:       "grubnetx64.efi",
		NextServer:     netip.MustParseAddr("10.72.0.5"),
		PXELinuxConfig: "cfg/board-8",
	})
	srv.serve(t, fullServer(t, 72, booter))

	dir := t.TempDir()
	conf := filepath.Join(dir, "dhclient.conf")
	if err := os.WriteFile(conf, []byte(`
option pxelinux-configfile code 209 = text;
send vendor-class-identifier "PXEClient:Arch:00007:UNDI:003016";
request subnet-mask, broadcast-address, routers, domain-name-servers, host-name, log-servers, pxelinux-configfile;
`), 0o644); err != nil {
		t.Fatal(err)
	}
	lf := filepath.Join(dir, "leases")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := cli.command(ctx, dhclient, "-d", "-1", "-v", "-cf", conf, "-lf", lf, "-pf", filepath.Join(dir, "pid"),
		"-sf", writeScript(t, dir), "eth0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	bound := filepath.Join(dir, "BOUND.env")
	for {
		if _, err := os.Stat(bound); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("dhclient did not bind:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("dhclient bound after %v", time.Since(start).Round(time.Millisecond))
	cancel()
	cmd.Wait()

	env := readEnv(t, bound)
	got := pick(env, "new_ip_address", "new_subnet_mask", "new_routers", "new_domain_name_servers", "new_host_name",
		"new_log_servers", "new_filename", "new_next_server", "new_dhcp_server_identifier", "new_dhcp_lease_time", "new_pxelinux_configfile")
	want := map[string]string{
		"new_ip_address":             "10.72.0.43",
		"new_subnet_mask":            "255.255.255.0",
		"new_routers":                "10.72.0.254",
		"new_domain_name_servers":    "10.72.0.53",
		"new_host_name":              "board-8",
		"new_log_servers":            "10.72.0.1",
		"new_filename":               "grubnetx64.efi",
		"new_next_server":            "10.72.0.5",
		"new_dhcp_server_identifier": "10.72.0.1",
		"new_dhcp_lease_time":        "3600",
		"new_pxelinux_configfile":    "cfg/board-8",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dhclient saw (-want +got):\n%s\ndhclient output:\n%s", diff, out.String())
	}
	leases, _ := os.ReadFile(lf)
	for _, s := range []string{"fixed-address 10.72.0.43;", `filename "grubnetx64.efi";`, `option pxelinux-configfile "cfg/board-8";`} {
		if !bytes.Contains(leases, []byte(s)) {
			t.Errorf("dhclient lease file lacks %q:\n%s", s, leases)
		}
	}
	if c := booter.clients()[0]; c.Firmware != FirmwareEFIx64 {
		t.Errorf("dhclient with an EFI x64 vendor class classified as %v", c.Firmware)
	}
}

// TestManyClients: 50 clients (nclient4, each with its own MAC) complete
// DORA concurrently and get distinct addresses; then one renews by
// unicast and releases.
func TestManyClients(t *testing.T) {
	l := newLAN(t, "srv", "cli")
	srv, cli := l.host("srv"), l.host("cli")
	srv.addAddr(t, "10.73.0.1/24")
	s := fullServer(t, 73, &bootTable{def: Boot{BootFile: "ipxe.efi"}})
	s.Logger = nil // 50 clients' debug logs are just noise
	srv.serve(t, s)

	const n = 50
	clients := make([]*nclient4.Client, n)
	cli.do(t, func() {
		for i := range clients {
			c, err := nclient4.New("eth0", nclient4.WithHWAddr(net.HardwareAddr{2, 0, 0, 1, 0, byte(i)}),
				nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
			if err != nil {
				t.Fatalf("nclient4.New: %v", err)
			}
			clients[i] = c
		}
	})
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	leases := make([]*nclient4.Lease, n)
	errs := make([]error, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() { leases[i], errs[i] = c.Request(ctx) })
	}
	wg.Wait()
	t.Logf("%d clients completed DORA in %v", n, time.Since(start).Round(time.Millisecond))
	seen := make(map[netip.Addr]bool)
	for i, lease := range leases {
		if errs[i] != nil {
			t.Fatalf("client %d: %v", i, errs[i])
		}
		ip := ipv4Of(lease.ACK.YourIPAddr)
		if seen[ip] || !s.inPool(ip) {
			t.Errorf("client %d got %v (duplicate or outside the pool)", i, ip)
		}
		seen[ip] = true
		if got, ok := s.MACFor(ip); !ok || !bytes.Equal(got, clients[i].InterfaceAddr()) {
			t.Errorf("MACFor(%v) = %v, %v; want %v", ip, got, ok, clients[i].InterfaceAddr())
		}
		if lease.ACK.BootFileName != "ipxe.efi" {
			t.Errorf("client %d boot file %q", i, lease.ACK.BootFileName)
		}
	}

	// Renewing: the client has its address configured and answers ARP;
	// the ACK comes back by unicast to ciaddr.
	ip := ipv4Of(leases[0].ACK.YourIPAddr)
	cli.addAddr(t, ip.String()+"/24")
	renewed, err := clients[0].Renew(ctx, leases[0])
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if got := ipv4Of(renewed.ACK.YourIPAddr); got != ip {
		t.Errorf("renewed %v; want %v", got, ip)
	}
	// RELEASE by unicast from the client's address (nclient4's Release
	// sends from 0.0.0.0, which the kernel drops as a martian source when
	// the destination is unicast).
	var udp *net.UDPConn
	cli.do(t, func() {
		var err error
		if udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, ClientPort))); err != nil {
			t.Fatal(err)
		}
	})
	defer udp.Close()
	rel, err := dhcpv4.NewReleaseFromACK(renewed.ACK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := udp.WriteTo(rel.ToBytes(), &net.UDPAddr{IP: net.IP{10, 73, 0, 1}, Port: ServerPort}); err != nil {
		t.Fatalf("sending RELEASE: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := s.LeaseFor(clients[0].InterfaceAddr()); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease still current after RELEASE")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startDnsmasq runs dnsmasq as the site's DHCP server on h's eth0 until
// the test ends. ping selects whether it pings addresses before offering
// them (its default).
func startDnsmasq(t *testing.T, h *host, dhcpRange string, ping bool) {
	t.Helper()
	dnsmasq := testenv.LookPath(t, "dnsmasq")
	dir := t.TempDir()
	args := []string{"--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces",
		"--dhcp-range=" + dhcpRange, "--dhcp-leasefile=" + filepath.Join(dir, "leases"), "--pid-file=",
		"--user=root", "--group=root", "--log-dhcp", "--log-facility=-", "--dhcp-authoritative"}
	if !ping {
		args = append(args, "--no-ping")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := h.command(ctx, dnsmasq, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("dnsmasq output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		bound := false
		h.do(t, func() { bound = udpPortBound(ServerPort) })
		if bound {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("dnsmasq did not start:\n%s", out.String())
}

// TestProxyWithDnsmasq: the site's dnsmasq hands out addresses, our
// proxyDHCP server boot information. A PXE client (built on nclient4's
// raw connection) sees both offers, takes its address from dnsmasq, and
// gets its boot file from our PXE boot server on port 4011.
func TestProxyWithDnsmasq(t *testing.T) {
	l := newLAN(t, "site", "srv", "cli")
	site, srv, cli := l.host("site"), l.host("srv"), l.host("cli")
	site.addAddr(t, "10.74.0.2/24")
	srv.addAddr(t, "10.74.0.1/24")
	startDnsmasq(t, site, "10.74.0.100,10.74.0.150,255.255.255.0,1h", false)
	booter := &bootTable{def: Boot{BootFile: "undionly.kpxe"}}
	srv.serve(t, &Server{Interface: "eth0", Booter: booter, Logger: testLogger(t)}) // the zero value, in proxy mode

	var conn net.PacketConn
	cli.do(t, func() {
		var err error
		if conn, err = nclient4.NewRawUDPConn("eth0", ClientPort); err != nil {
			t.Fatal(err)
		}
	})
	defer conn.Close()
	pxeOpts := map[uint8][]byte{
		60: []byte("PXEClient:Arch:00000:UNDI:002001"),
		93: {0, 0},
		94: {1, 2, 1},
		97: append([]byte{0}, bytes.Repeat([]byte{0x11}, 16)...),
		55: {1, 3, 6, 43, 54, 60, 66, 67},
	}
	disc := request(dhcpv4.MessageTypeDiscover, cli.mac, pxeOpts)
	disc.TransactionID = dhcpv4.TransactionID{0xde, 0xad, 0xbe, 0xef}
	disc.SetBroadcast()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: ServerPort}
	replies := exchange(t, conn, disc, bcast, 2, 5*time.Second)
	var site4, proxy *dhcpv4.DHCPv4
	for _, r := range replies {
		switch ipv4Of(r.ServerIdentifier()).String() {
		case "10.74.0.2":
			site4 = r
		case "10.74.0.1":
			proxy = r
		}
	}
	if site4 == nil || proxy == nil {
		t.Fatalf("offers from site %v, proxy %v; want both (%d replies)", site4 != nil, proxy != nil, len(replies))
	}
	yi := ipv4Of(site4.YourIPAddr)
	if !netip.MustParsePrefix("10.74.0.0/24").Contains(yi) || site4.BootFileName != "" {
		t.Errorf("dnsmasq offered %v, file %q", yi, site4.BootFileName)
	}
	if ipv4Of(proxy.YourIPAddr).IsValid() || string(proxy.Options[60]) != "PXEClient" || proxy.BootFileName != "undionly.kpxe" ||
		ipv4Of(proxy.ServerIPAddr).String() != "10.74.0.1" || !bytes.Equal(proxy.Options[97], pxeOpts[97]) {
		t.Errorf("proxy offer: yiaddr %v class %q file %q siaddr %v uuid %x", proxy.YourIPAddr, proxy.Options[60],
			proxy.BootFileName, proxy.ServerIPAddr, proxy.Options[97])
	}

	// Take the address from the site's server.
	req := request(dhcpv4.MessageTypeRequest, cli.mac, pxeOpts)
	req.TransactionID = disc.TransactionID
	req.SetBroadcast()
	req.Options[54] = site4.Options[54]
	req.Options[50] = yi.AsSlice()
	acks := exchange(t, conn, req, bcast, 1, 5*time.Second)
	if len(acks) == 0 || acks[0].MessageType() != dhcpv4.MessageTypeAck || ipv4Of(acks[0].ServerIdentifier()).String() != "10.74.0.2" {
		t.Fatalf("no ACK from dnsmasq: %v", acks)
	}
	cli.addAddr(t, yi.String()+"/24")

	// The ProxyDHCPREQUEST, by unicast from the new address to port 4011.
	var udp *net.UDPConn
	cli.do(t, func() {
		var err error
		if udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(yi, ClientPort))); err != nil {
			t.Fatal(err)
		}
	})
	defer udp.Close()
	preq := request(dhcpv4.MessageTypeRequest, cli.mac, pxeOpts)
	preq.ClientIPAddr = yi.AsSlice()
	preq.Options[43] = []byte{71, 4, 0x80, 0x00, 0, 0, 255}
	preq.Options[54] = proxy.Options[54]
	packs := exchange(t, udp, preq, &net.UDPAddr{IP: net.IP{10, 74, 0, 1}, Port: PXEPort}, 1, 5*time.Second)
	if len(packs) == 0 {
		t.Fatalf("no answer from the PXE boot server")
	}
	pack := packs[0]
	if pack.MessageType() != dhcpv4.MessageTypeAck || pack.BootFileName != "undionly.kpxe" ||
		!bytes.Equal(pack.Options[43], []byte{71, 4, 0x80, 0, 0, 0, 255}) || ipv4Of(pack.YourIPAddr).IsValid() {
		t.Errorf("PXE boot server answer: %v file %q option 43 %v yiaddr %v", pack.MessageType(), pack.BootFileName, pack.Options[43], pack.YourIPAddr)
	}
	for _, c := range booter.clients() {
		if c.Firmware != FirmwareBIOS {
			t.Errorf("PXE client classified as %v", c.Firmware)
		}
	}
}

// TestRefuseForeignServer: with dnsmasq serving the network, a full-mode
// server refuses to start and names it.
func TestRefuseForeignServer(t *testing.T) {
	l := newLAN(t, "site", "srv")
	site, srv := l.host("site"), l.host("srv")
	site.addAddr(t, "10.75.0.2/24")
	// With pinging, as dnsmasq runs by default: the probe must still see
	// it.
	startDnsmasq(t, site, "10.75.0.100,10.75.0.150,255.255.255.0,1h", true)
	s := fullServer(t, 75, &bootTable{})
	s.SkipProbe = false
	start := time.Now()
	err := <-srv.goDo(func() error { return s.ListenAndServe(t.Context()) })
	t.Logf("ListenAndServe returned after %v: %v", time.Since(start).Round(time.Millisecond), err)
	var fe *ForeignServerError
	if !errors.As(err, &fe) {
		t.Fatalf("ListenAndServe = %v; want a *ForeignServerError", err)
	}
	want := ForeignServerError{Interface: "eth0", ServerID: netip.MustParseAddr("10.75.0.2"), MAC: site.mac}
	fe.Offered = netip.Addr{}
	if diff := cmp.Diff(want, *fe, cmpAddr); diff != "" {
		t.Errorf("ForeignServerError (-want +got):\n%s", diff)
	}
	for _, s := range []string{"10.75.0.2", site.mac.String()} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	// Nothing was left bound.
	srv.do(t, func() {
		if udpPortBound(ServerPort) {
			t.Errorf("port 67 still bound after the refusal")
		}
	})
}

// TestProbeIgnoresSelf: an offer with our own server identifier (another
// instance of this server, say) doesn't count as a foreign server.
func TestProbeIgnoresSelf(t *testing.T) {
	l := newLAN(t, "a", "b")
	a, b := l.host("a"), l.host("b")
	a.addAddr(t, "10.76.0.1/24")
	b.addAddr(t, "10.76.0.9/24")
	a.serve(t, fullServer(t, 76, &bootTable{}))
	s := fullServer(t, 76, &bootTable{})
	s.ProbeTimeout = 1500 * time.Millisecond
	if err := <-b.goDo(func() error { return s.Probe(t.Context()) }); err != nil {
		t.Errorf("Probe with our own server identifier = %v; want nil", err)
	}
	s.ServerIP = netip.MustParseAddr("10.76.0.9")
	err := <-b.goDo(func() error { return s.Probe(t.Context()) })
	var fe *ForeignServerError
	if !errors.As(err, &fe) || fe.ServerID.String() != "10.76.0.1" || !slices.Equal(fe.MAC, a.mac) {
		t.Errorf("Probe = %v; want a foreign server 10.76.0.1 at %v", err, a.mac)
	}
}
