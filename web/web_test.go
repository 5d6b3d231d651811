package web

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rackboot/rackboot/internal/testenv"
	"github.com/rackboot/rackboot/lab"
	"github.com/rackboot/rackboot/nbd/cow"
)

var loopMAC, _ = net.ParseMAC("52:54:00:12:34:56")

// startWeb serves a lab whose only board sits at 127.0.0.1.
func startWeb(t *testing.T) (string, *lab.SQLite) {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tree", "amd64"), 0o755)
	kernel := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	os.WriteFile(filepath.Join(dir, "tree", "amd64", "vmlinuz"), kernel, 0o644)
	os.Symlink("/etc/passwd", filepath.Join(dir, "tree", "passwd"))
	img := filepath.Join(dir, "img")
	os.WriteFile(img, make([]byte, 1<<20), 0o444)
	ctx := t.Context()
	store, err := lab.OpenSQLite(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	sessions, err := cow.OpenStore(dir, cow.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sessions.Close() })
	image, err := cow.OpenImage(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { image.Close() })
	tree, err := os.OpenRoot(filepath.Join(dir, "tree"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tree.Close() })
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	l, err := lab.New(ctx, lab.Config{
		Address: netip.MustParseAddr("127.0.0.1"), NBDPort: 10809, HTTPPort: 80,
		Boards:  []lab.Board{{Name: "loopy", MAC: loopMAC, Arch: lab.AMD64, Image: "img"}},
		Kernels: map[lab.Arch]lab.KernelFiles{lab.AMD64: {Kernel: "amd64/vmlinuz", Initrd: "amd64/initrd"}},
	}, lab.Options{
		Store: store, Sessions: sessions, Images: lab.StaticImages{"img": image}, Tree: tree, Logger: log,
		Neighbors: lab.NeighborsFunc(func(ip netip.Addr) (net.HardwareAddr, bool) {
			return loopMAC, ip == netip.MustParseAddr("127.0.0.1")
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Flush(context.Background()) }) // before the store closes
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Lab: l, Logger: log}).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), store
}

func get(t *testing.T, url string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBootFiles(t *testing.T) {
	base, _ := startWeb(t)
	if code, body := get(t, base+"/amd64/vmlinuz", "Range", "bytes=16-31"); code != http.StatusPartialContent || body != "0123456789abcdef" {
		t.Errorf("Range request: %d %q", code, body)
	}
	if code, body := get(t, base+"/amd64/vmlinuz"); code != 200 || len(body) != 1<<20 {
		t.Errorf("whole file: %d, %d bytes", code, len(body))
	}
	if code, body := get(t, base+"/ipxe/boot.ipxe"); code != 200 || !strings.Contains(body, "rackboot.board=loopy") {
		t.Errorf("iPXE script: %d\n%s", code, body)
	}
	for path, want := range map[string]int{
		"/passwd":                            http.StatusForbidden, // symlink out of the tree
		"/nope":                              http.StatusNotFound,
		"/pxelinux.cfg/01-52-54-00-00-00-01": http.StatusNotFound, // another MAC
	} {
		if code, _ := get(t, base+path); code != want {
			t.Errorf("GET %s: %d; want %d", path, code, want)
		}
	}
}

// A boot config starts its boot on a GET, which the client reads; a HEAD
// starts nothing.
func TestHeadStartsNoBoot(t *testing.T) {
	base, store := startWeb(t)
	resp, err := http.Head(base + "/ipxe/boot.ipxe")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("HEAD: %d", resp.StatusCode)
	}
	if rec, err := store.CurrentBoot(t.Context(), "loopy"); err == nil {
		t.Errorf("HEAD started boot %d", rec.ID)
	}
	_, body := get(t, base+"/ipxe/boot.ipxe")
	rec, err := store.CurrentBoot(t.Context(), "loopy")
	if err != nil {
		t.Fatalf("GET started no boot: %v", err)
	}
	if !strings.Contains(body, "rackboot.token="+rec.Token) {
		t.Errorf("the current boot's token %s is not the script's:\n%s", rec.Token, body)
	}
}

// TestCurlRange fetches with a real HTTP client.
func TestCurlRange(t *testing.T) {
	curl := testenv.LookPath(t, "curl")
	base, _ := startWeb(t)
	out, err := exec.Command(curl, "-fsS", "-r", "1048560-", base+"/amd64/vmlinuz").Output()
	if err != nil || string(out) != "0123456789abcdef" {
		t.Errorf("curl -r: %q, %v", out, err)
	}
	out, err = exec.Command(curl, "-sSL", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is", base+"/../../etc/passwd").Output()
	if err != nil || (string(out) != "403" && string(out) != "404") {
		t.Errorf("curl --path-as-is traversal: %q, %v; want 403 or 404", out, err)
	}
	// An encoded slash reaches the handler as "..", past the router's
	// cleaning; it is refused even where it would stay in the tree.
	out, err = exec.Command(curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is", base+"/amd64/..%2Famd64/vmlinuz").Output()
	if err != nil || string(out) != "403" {
		t.Errorf("curl of an encoded ..: %q, %v; want 403", out, err)
	}
}

func TestReport(t *testing.T) {
	base, store := startWeb(t)
	_, cfg := get(t, base+"/pxelinux.cfg/default")
	m := regexp.MustCompile(`rackboot\.token=([0-9a-f]+)`).FindStringSubmatch(cfg)
	if m == nil {
		t.Fatalf("no token in config:\n%s", cfg)
	}
	post := func(token, body string) int {
		req, _ := http.NewRequest("POST", base+"/api/v1/report", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// In order: the accepted ones build the timeline checked below.
	tests := []struct {
		name, token, body string
		want              int
	}{
		{"ok", m[1], `{"step":"network","status":"ok","duration_ns":1000}`, http.StatusNoContent},
		{"failed step", m[1], `{"step":"disk","status":"failed","error":"no disk"}`, http.StatusNoContent},
		{"detail", m[1], `{"step":"heartbeat","status":"ok","detail":{"cpus":2}}`, http.StatusNoContent},
		{"no token", "", `{"step":"network","status":"ok"}`, http.StatusUnauthorized},
		{"wrong token", strings.Repeat("0", 32), `{"step":"network","status":"ok"}`, http.StatusForbidden},
		{"bad json", m[1], `{"step":`, http.StatusBadRequest},
		{"unknown field", m[1], `{"step":"x","evil":1}`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := post(tt.token, tt.body); got != tt.want {
				t.Errorf("POST: %d; want %d", got, tt.want)
			}
		})
	}
	rec, err := store.BootByToken(t.Context(), m[1])
	if err != nil {
		t.Fatal(err)
	}
	events, _ := store.Events(t.Context(), rec.ID)
	var steps []string
	for _, e := range events {
		if e.Kind == "step" {
			steps = append(steps, e.Name+"="+e.Status)
		}
	}
	if strings.Join(steps, ",") != "network=ok,disk=failed,heartbeat=ok" {
		t.Errorf("steps recorded: %v", steps)
	}
	code, body := get(t, base+"/api/v1/boots")
	if code != 200 || !strings.Contains(body, `"board": "loopy"`) || !strings.Contains(body, `"name": "disk"`) || !strings.Contains(body, `"cpus": 2`) {
		t.Errorf("GET /api/v1/boots: %d\n%s", code, body)
	}
	if strings.Contains(body, m[1]) {
		t.Error("the boots API shows a boot token")
	}
}
