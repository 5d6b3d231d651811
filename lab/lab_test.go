package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/eventtest"
	"github.com/rackboot/rackboot/nbd/cow"
)

var (
	macA = mustMAC("52:54:00:00:00:0a")
	macB = mustMAC("52:54:00:00:00:0b")
	macU = mustMAC("52:54:00:00:00:99")
	ipA  = netip.MustParseAddr("10.9.0.10")
	ipB  = netip.MustParseAddr("10.9.0.11")
	ipU  = netip.MustParseAddr("10.9.0.99")
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// neighbors maps addresses to MACs, as DHCP leases would.
type neighbors map[netip.Addr]net.HardwareAddr

func (n neighbors) MACFor(ip netip.Addr) (net.HardwareAddr, bool) {
	m, ok := n[ip]
	return m, ok
}

type env struct {
	dir      string
	lab      *Lab
	store    *SQLite
	sessions *cow.Store
	image    *cow.Image
	cfg      Config
	catalog  string           // the image catalog's directory, if any
	logs     eventtest.Buffer // everything the lab logged
}

func newEnv(t *testing.T, unknown UnknownPolicy) *env {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tree", "amd64"), 0o755)
	os.WriteFile(filepath.Join(dir, "tree", "amd64", "vmlinuz"), []byte("kernel"), 0o644)
	os.WriteFile(filepath.Join(dir, "secret"), []byte("outside"), 0o644)
	os.Symlink("../secret", filepath.Join(dir, "tree", "escape"))
	imgPath := filepath.Join(dir, "minimal.img")
	os.WriteFile(imgPath, bytes.Repeat([]byte("master!!"), 8192), 0o444)
	e := &env{dir: dir, cfg: Config{
		Address: netip.MustParseAddr("10.9.0.1"), NBDPort: 10809, HTTPPort: 8080,
		Boards: []Board{
			{Name: "board-a", MAC: macA, Arch: AMD64, IP: ipA, Image: "minimal", BuildDisk: "largest", Cmdline: "quiet=no"},
			{Name: "board-b", MAC: macB, Arch: AMD64, Image: "minimal", Loader: "pxelinux"},
		},
		Kernels: map[Arch]KernelFiles{AMD64: {Kernel: "amd64/vmlinuz", Initrd: "amd64/initrd.img"}},
		Unknown: unknown,
	}}
	img, err := cow.OpenImage(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	e.image = img
	t.Cleanup(func() { img.Close() })
	e.open(t)
	return e
}

// open (re)starts the lab on the state directory, as a rackboot restart.
func (e *env) open(t *testing.T) {
	t.Helper()
	if e.store != nil {
		e.store.Close()
		e.sessions.Close()
	}
	ctx := t.Context()
	var err error
	e.store, err = OpenSQLite(ctx, filepath.Join(e.dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	e.sessions, err = cow.OpenStore(e.dir, cow.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := os.OpenRoot(filepath.Join(e.dir, "tree"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tree.Close() })
	var catalog *os.Root
	if e.catalog != "" {
		if catalog, err = os.OpenRoot(e.catalog); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { catalog.Close() })
	}
	e.lab, err = New(ctx, e.cfg, Options{
		Store: e.store, Sessions: e.sessions, Images: StaticImages{"minimal": e.image},
		Tree: tree, Catalog: catalog, Neighbors: neighbors{ipA: macA, ipB: macB, ipU: macU},
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), &e.logs), &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.store.Close()
		e.sessions.Close()
	})
	// Runs first: queued writes reach the store before it closes.
	t.Cleanup(func() {
		if err := e.lab.Flush(context.Background()); err != nil {
			t.Errorf("Flush: %v", err)
		}
	})
}

// fetch reads path as the machine at peer, and says it was delivered, as
// a transport does once the machine has it.
func (e *env) fetch(t *testing.T, path string, peer netip.Addr) (string, error) {
	t.Helper()
	f, err := e.lab.OpenFile(t.Context(), path, peer)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != f.Size {
		t.Errorf("%s: size %d, read %d bytes", path, f.Size, len(b))
	}
	if err := f.Delivered(t.Context()); err != nil {
		t.Fatalf("%s delivered: %v", path, err)
	}
	return string(b), nil
}

var tokenRE = regexp.MustCompile(`rackboot\.token=([0-9a-f]{32})`)

func token(t *testing.T, config string) string {
	t.Helper()
	m := tokenRE.FindStringSubmatch(config)
	if m == nil {
		t.Fatalf("no token in config:\n%s", config)
	}
	return m[1]
}

func TestBootConfigOnlyForOwnMAC(t *testing.T) {
	e := newEnv(t, UnknownIgnore)
	cfg, err := e.fetch(t, "pxelinux.cfg/01-52-54-00-00-00-0a", ipA)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"KERNEL amd64/vmlinuz", "INITRD amd64/initrd.img", "IPAPPEND 2", "console=ttyS0,115200",
		"rackboot.board=board-a", "rackboot.server=10.9.0.1", "rackboot.disk=largest", "libata.ignore_hpa=1", "quiet=no",
		"rackboot.nbd=nbd://10.9.0.1:10809/" + token(t, cfg),
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	// Board B asking for A's config by MAC: refused.
	if _, err := e.fetch(t, "pxelinux.cfg/01-52-54-00-00-00-0a", ipB); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("A's config fetched from B's address: %v; want fs.ErrNotExist", err)
	}
	// An address nobody leased: refused.
	if _, err := e.fetch(t, "pxelinux.cfg/default", netip.MustParseAddr("10.9.0.200")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("config for an unleased address: %v; want fs.ErrNotExist", err)
	}
	// The fallbacks give each board its own config.
	for _, name := range []string{"0A09000B", "0A0900", "default", "default-arm-virt", "d9b2ba6c-3e1f-4a1a-9c9e-9d0b3e5c7a11"} {
		cfg, err := e.fetch(t, "pxelinux.cfg/"+name, ipB)
		if err != nil || !strings.Contains(cfg, "rackboot.board=board-b") {
			t.Errorf("pxelinux.cfg/%s from B: %v\n%s", name, err, cfg)
		}
	}
	if _, err := e.fetch(t, "pxelinux.cfg/../../etc", ipB); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("traversing config name: %v; want fs.ErrPermission", err)
	}
	if _, err := e.fetch(t, "pxelinux.cfg/README", ipB); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("odd config name: %v; want fs.ErrNotExist", err)
	}
}

// A config request that isn't delivered (over TFTP: a request with a
// forged source address, whose answer goes to the real board and is never
// acknowledged) starts nothing: the board's live layer and token stay.
// Once delivered, the boot starts and the old layer goes.
func TestUndeliveredConfigStartsNoBoot(t *testing.T) {
	e := newEnv(t, UnknownIdentify)
	ctx := t.Context()
	cfg, err := e.fetch(t, "pxelinux.cfg/default", ipB)
	if err != nil {
		t.Fatal(err)
	}
	tok := token(t, cfg)
	s, _, err := e.lab.OpenSession(ctx, tok, ipB)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.WriteAt([]byte("B's build"), 0); err != nil {
		t.Fatal(err)
	}
	var pending []*File
	for _, path := range []string{"pxelinux.cfg/default", "pxelinux.cfg/01-52-54-00-00-00-0b", "ipxe/boot.ipxe"} {
		f, err := e.lab.OpenFile(ctx, path, ipB)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		pending = append(pending, f)
	}
	got := make([]byte, 9)
	if _, err := s.ReadAt(got, 0); err != nil || string(got) != "B's build" {
		t.Errorf("B's live layer after undelivered configs: %q, %v", got, err)
	}
	if s2, _, err := e.lab.OpenSession(ctx, tok, ipB); err != nil {
		t.Errorf("B's reconnect after undelivered configs: %v", err)
	} else {
		s2.Close()
	}
	// An unknown machine's identify config starts no boot either.
	if f, err := e.lab.OpenFile(ctx, "pxelinux.cfg/default", ipU); err != nil {
		t.Fatal(err)
	} else if b, _ := io.ReadAll(f); e.lab.Report(ctx, token(t, string(b)), ipU, Step{Name: "identify", Status: "ok"}) == nil {
		t.Error("an undelivered identify config's token is accepted")
	}

	// The second one is delivered: B's boot starts.
	b, _ := io.ReadAll(pending[1])
	if err := pending[1].Delivered(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAt(got, 0); err == nil {
		t.Error("the previous boot's layer still reads after a new boot started")
	}
	if _, _, err := e.lab.OpenSession(ctx, tok, ipB); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("previous boot's token after a new boot: %v; want fs.ErrNotExist", err)
	}
	s3, _, err := e.lab.OpenSession(ctx, token(t, string(b)), ipB)
	if err != nil {
		t.Fatalf("the delivered config's token: %v", err)
	}
	s3.Close()
	// Delivering again changes nothing; delivering another starts another.
	if err := pending[1].Delivered(ctx); err != nil {
		t.Fatal(err)
	}
	if s3, _, err = e.lab.OpenSession(ctx, token(t, string(b)), ipB); err != nil {
		t.Errorf("token after a second Delivered: %v", err)
	} else {
		s3.Close()
	}
}

// A live token shows nowhere but in its board's boot config: not in
// errors, logs, or the timeline of reports that quote it.
func TestTokenNeverShown(t *testing.T) {
	e := newEnv(t, UnknownIgnore)
	ctx := t.Context()
	cfg, err := e.fetch(t, "pxelinux.cfg/default", ipA)
	if err != nil {
		t.Fatal(err)
	}
	tok := token(t, cfg)
	if _, _, err := e.lab.OpenSession(ctx, tok, ipB); err == nil || strings.Contains(err.Error(), tok) {
		t.Errorf("A's token from B's address: %v; want a refusal that doesn't quote it", err)
	}
	uri := "nbd://10.9.0.1:10809/" + tok
	if err := e.lab.Report(ctx, tok, ipA, Step{
		Name: "nbd", Status: "failed", Error: "attaching " + uri + ": refused",
		Detail: json.RawMessage(`{"uri":"` + uri + `"}`),
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.lab.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rec, err := e.store.CurrentBoot(ctx, "board-a")
	if err != nil {
		t.Fatal(err)
	}
	events, err := e.store.Events(ctx, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	var step *Event
	for i := range events {
		if events[i].Kind == "step" {
			step = &events[i]
		}
	}
	if step == nil {
		t.Fatalf("no step in the timeline: %+v", events)
	}
	if want := "attaching nbd://10.9.0.1:10809/<token>: refused"; step.Error != want {
		t.Errorf("stored error %q; want %q", step.Error, want)
	}
	if want := `{"uri":"nbd://10.9.0.1:10809/<token>"}`; step.Detail != want {
		t.Errorf("stored detail %s; want %s", step.Detail, want)
	}
	if logs := e.logs.String(); strings.Contains(logs, tok) {
		t.Errorf("the token is in the log:\n%s", logs)
	}
}

func TestBootSessionLifecycle(t *testing.T) {
	e := newEnv(t, UnknownIgnore)
	ctx := t.Context()
	cfg1, err := e.fetch(t, "pxelinux.cfg/01-52-54-00-00-00-0a", ipA)
	if err != nil {
		t.Fatal(err)
	}
	tok1 := token(t, cfg1)
	s, rec, err := e.lab.OpenSession(ctx, tok1, ipA)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Board != "board-a" {
		t.Errorf("session of board %q", rec.Board)
	}
	if _, err := s.WriteAt([]byte("boot one was here"), 0); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Another board can't attach A's layer, even with the token.
	if _, _, err := e.lab.OpenSession(ctx, tok1, ipB); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("A's session from B's address: %v; want fs.ErrNotExist", err)
	}
	if _, _, err := e.lab.OpenSession(ctx, "not-a-token", ipA); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("made-up export: %v; want fs.ErrNotExist", err)
	}

	// A restart of rackboot: the boot and its layer are still there.
	e.open(t)
	s, _, err = e.lab.OpenSession(ctx, tok1, ipA)
	if err != nil {
		t.Fatalf("session after restart: %v", err)
	}
	got := make([]byte, 17)
	s.ReadAt(got, 0)
	if string(got) != "boot one was here" {
		t.Errorf("session after restart reads %q", got)
	}
	s.Close()

	// The next boot: a new token, the old one dead, the old layer gone.
	cfg2, err := e.fetch(t, "pxelinux.cfg/01-52-54-00-00-00-0a", ipA)
	if err != nil {
		t.Fatal(err)
	}
	tok2 := token(t, cfg2)
	if tok2 == tok1 {
		t.Fatal("a new boot reused the token")
	}
	if _, _, err := e.lab.OpenSession(ctx, tok1, ipA); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("previous boot's export: %v; want fs.ErrNotExist", err)
	}
	sessions, _ := e.sessions.List()
	for _, si := range sessions {
		if si.Owner == "board-a" {
			t.Errorf("previous boot's layer %s still on disk", si.Name)
		}
	}
	s, _, err = e.lab.OpenSession(ctx, tok2, ipA)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.ReadAt(got, 0)
	if string(got) != "master!!master!!m" {
		t.Errorf("new boot reads %q; want the pristine image", got)
	}
}

func TestReport(t *testing.T) {
	e := newEnv(t, UnknownIgnore)
	ctx := t.Context()
	cfg, _ := e.fetch(t, "pxelinux.cfg/default", ipA)
	tok := token(t, cfg)
	step := Step{Name: "nbd-attach", Status: "ok", Duration: 1500 * time.Millisecond}
	if err := e.lab.Report(ctx, tok, ipA, step); err != nil {
		t.Fatal(err)
	}
	if err := e.lab.Report(ctx, tok, ipB, step); !errors.Is(err, ErrBadToken) {
		t.Errorf("report from another address: %v; want ErrBadToken", err)
	}
	if err := e.lab.Report(ctx, "0123", ipA, step); !errors.Is(err, ErrBadToken) {
		t.Errorf("report with a bad token: %v; want ErrBadToken", err)
	}
	e.lab.Transfer(ctx, "tftp", "amd64/vmlinuz", ipA, 6, time.Millisecond, nil)
	rec, _ := e.store.BootByToken(ctx, tok)
	events, err := e.store.Events(ctx, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ev := range events {
		kinds = append(kinds, ev.Kind+":"+ev.Name)
	}
	if want := "config:pxelinux.cfg/default step:nbd-attach tftp:amd64/vmlinuz"; strings.Join(kinds, " ") != want {
		t.Errorf("timeline %v; want %s", kinds, want)
	}
}

func TestUnknownMachines(t *testing.T) {
	for _, policy := range []UnknownPolicy{UnknownIgnore, UnknownIdentify} {
		t.Run(string(policy), func(t *testing.T) {
			e := newEnv(t, policy)
			ctx := t.Context()
			a := e.lab.DHCP(ctx, DHCPClient{MAC: macU, Firmware: "bios", Arch: "0"})
			if a.IP.IsValid() || a.Hostname != "" {
				t.Errorf("unknown machine got %+v", a)
			}
			if (a.BootFile != "") != (policy == UnknownIdentify) {
				t.Errorf("unknown machine boot file %q under policy %s", a.BootFile, policy)
			}
			unknown, err := e.lab.Unknown(ctx)
			if err != nil || len(unknown) != 1 || unknown[0].MAC.String() != macU.String() || unknown[0].Firmware != "bios" {
				t.Errorf("unknown machines %+v, %v; want the one that asked", unknown, err)
			}
			cfg, err := e.fetch(t, "pxelinux.cfg/default", ipU)
			if policy == UnknownIgnore {
				if !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("boot config for an unknown machine: %v", err)
				}
				return
			}
			if err != nil || !strings.Contains(cfg, "rackboot.mode=identify") || strings.Contains(cfg, "rackboot.nbd") {
				t.Fatalf("identify config: %v\n%s", err, cfg)
			}
			// It can report, but never attach a root.
			tok := token(t, cfg)
			if err := e.lab.Report(ctx, tok, ipU, Step{Name: "identify", Status: "ok"}); err != nil {
				t.Errorf("identify report: %v", err)
			}
			if _, _, err := e.lab.OpenSession(ctx, tok, ipU); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("identify boot opened a session: %v", err)
			}
		})
	}
}

func TestDHCPDecisions(t *testing.T) {
	e := newEnv(t, UnknownIgnore)
	tests := map[string]struct {
		c    DHCPClient
		want DHCPAnswer
	}{
		"bios":             {DHCPClient{MAC: macA, Firmware: "bios"}, DHCPAnswer{IP: ipA, Hostname: "board-a", BootFile: "lpxelinux.0"}},
		"ipxe":             {DHCPClient{MAC: macA, Firmware: "ipxe"}, DHCPAnswer{IP: ipA, Hostname: "board-a", BootFile: "http://10.9.0.1:8080/ipxe/boot.ipxe"}},
		"ipxe to pxelinux": {DHCPClient{MAC: macB, Firmware: "ipxe"}, DHCPAnswer{Hostname: "board-b", BootFile: "pxelinux.0"}},
		"efi":              {DHCPClient{MAC: macB, Firmware: "efi-x64"}, DHCPAnswer{Hostname: "board-b", BootFile: "ipxe.efi"}},
		"uboot":            {DHCPClient{MAC: macB, Firmware: "u-boot"}, DHCPAnswer{Hostname: "board-b", BootFile: "boot.scr.uimg"}},
		"initramfs":        {DHCPClient{MAC: macA, Firmware: "initramfs"}, DHCPAnswer{IP: ipA, Hostname: "board-a"}},
		"unknown os":       {DHCPClient{MAC: macU, Firmware: "os"}, DHCPAnswer{}},
		"unknown pxe":      {DHCPClient{MAC: macU, Firmware: "bios"}, DHCPAnswer{}},
		"efi arm64":        {DHCPClient{MAC: macB, Firmware: "efi-arm64"}, DHCPAnswer{Hostname: "board-b"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := e.lab.DHCP(t.Context(), tt.c); got != tt.want {
				t.Errorf("DHCP(%+v) = %+v; want %+v", tt.c, got, tt.want)
			}
		})
	}
	e.lab.DHCP(t.Context(), DHCPClient{MAC: macB, Firmware: "efi-arm64"})
	if logs := e.logs.String(); strings.Count(logs, "no boot program for this firmware") != 1 || !strings.Contains(logs, "firmware=efi-arm64") {
		t.Errorf("want one warning for board-b's efi-arm64 firmware in a minute; log:\n%s", logs)
	}
}

func TestTreeFiles(t *testing.T) {
	e := newEnv(t, UnknownIgnore)
	e.catalog = filepath.Join(e.dir, "images")
	os.MkdirAll(filepath.Join(e.catalog, "minimal", "v1", "boot", "amd64"), 0o755)
	os.WriteFile(filepath.Join(e.catalog, "minimal", "v1", "boot", "amd64", "vmlinuz"), []byte("v1 kernel"), 0o444)
	os.WriteFile(filepath.Join(e.catalog, "minimal", "v1", "root.img"), []byte("root"), 0o444)
	e.open(t)
	if got, err := e.fetch(t, "amd64/vmlinuz", ipA); err != nil || got != "kernel" {
		t.Errorf("amd64/vmlinuz = %q, %v", got, err)
	}
	if got, err := e.fetch(t, "images/minimal/v1/boot/amd64/vmlinuz", ipA); err != nil || got != "v1 kernel" {
		t.Errorf("images/minimal/v1/boot/amd64/vmlinuz = %q, %v", got, err)
	}
	// Only boot/ of a catalog image is served, and ".." never, even
	// where it stays in the tree: HTTP decodes %2F after routing.
	for _, p := range []string{"images/minimal/v1/boot/../root.img", "images/minimal/v1/root.img", "amd64/../amd64/vmlinuz", "./amd64/vmlinuz", "amd64//vmlinuz", "/amd64/vmlinuz"} {
		if _, err := e.fetch(t, p, ipA); !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission) {
			t.Errorf("%s: %v; want refused", p, err)
		}
	}
	for _, p := range []string{"escape", "../secret", "amd64", "nope"} {
		if _, err := e.fetch(t, p, ipA); err == nil {
			t.Errorf("%s served; want refused", p)
		}
	}
	if got, err := e.fetch(t, "boot.scr.uimg", ipA); err != nil || !strings.Contains(got, "pxe get && pxe boot") {
		t.Errorf("boot.scr.uimg = %q, %v", got, err)
	}
}

func TestIPXEScript(t *testing.T) {
	e := newEnv(t, UnknownIgnore)
	got, err := e.fetch(t, "ipxe/boot.ipxe", ipB)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"#!ipxe", "kernel http://10.9.0.1:8080/amd64/vmlinuz initrd=initrd", "rackboot.board=board-b",
		"BOOTIF=01-${netX/mac:hexhyp}", "initrd --name initrd http://10.9.0.1:8080/amd64/initrd.img", "boot"} {
		if !strings.Contains(got, want) {
			t.Errorf("iPXE script lacks %q:\n%s", want, got)
		}
	}
}

func TestSchemaMigrations(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.db.Exec(`INSERT INTO schema_migrations (version, applied_ns) VALUES (999, 0)`)
	s.Close()
	if _, err := OpenSQLite(ctx, path); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("opening a database from a newer rackboot: %v; want a refusal", err)
	}
}

// TestSQLiteLeaseChanges: UpdateLeases applies its changes in order in one
// transaction; an address belongs to one MAC.
func TestSQLiteLeaseChanges(t *testing.T) {
	ctx := t.Context()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ip1, ip2 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	exp := time.Unix(1e9, 0)
	save := func(mac net.HardwareAddr, ip netip.Addr) LeaseChange {
		return LeaseChange{Lease: Lease{MAC: mac, IP: ip, Expiry: exp}}
	}
	if err := s.UpdateLeases(ctx, []LeaseChange{
		save(macA, ip1),
		{Lease: Lease{MAC: macA}, Delete: true},
		save(macA, ip2), // after the delete: stays
		save(macB, ip1),
		save(macU, ip1), // takes ip1 over from macB
	}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []Lease{{MAC: macU, IP: ip1, Expiry: exp}, {MAC: macA, IP: ip2, Expiry: exp}}
	same := len(got) == len(want)
	for i := 0; same && i < len(got); i++ {
		g, w := got[i], want[i]
		same = bytes.Equal(g.MAC, w.MAC) && g.IP == w.IP && g.Expiry.Equal(w.Expiry) && g.Hostname == w.Hostname
	}
	if !same {
		t.Errorf("leases %v, want %v", got, want)
	}

	// Batches of one change run without an explicit transaction, and
	// must keep the same rules.
	for _, c := range []LeaseChange{
		save(macB, ip2), // takes ip2 over from macA
		save(macB, ip2), // unchanged
		{Lease: Lease{MAC: macU}, Delete: true},
		save(macA, ip1),
	} {
		if err := s.UpdateLeases(ctx, []LeaseChange{c}); err != nil {
			t.Fatal(err)
		}
	}
	if got, err = s.Leases(ctx); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !bytes.Equal(got[0].MAC, macA) || got[0].IP != ip1 || !bytes.Equal(got[1].MAC, macB) || got[1].IP != ip2 {
		t.Errorf("after single changes, leases %v; want %s on %s and %s on %s", got, macA, ip1, macB, ip2)
	}

	// Two sightings of one machine in a batch count twice.
	u := Unknown{MAC: macU, Firmware: "bios", Arch: "0", LastSeen: exp}
	if err := s.SeenUnknown(ctx, u, u, Unknown{MAC: macB, Firmware: "ipxe", LastSeen: exp}); err != nil {
		t.Fatal(err)
	}
	list, err := s.Unknown(ctx)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, x := range list {
		counts[x.MAC.String()] = x.Count
	}
	if counts[macU.String()] != 2 || counts[macB.String()] != 1 || len(counts) != 2 {
		t.Errorf("unknown machines seen %v, want %s twice and %s once", counts, macU, macB)
	}
}
