package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rackboot/rackboot/internal/testenv"
)

// rackbootBin is the command built once for the tests that run it as a
// process (signals, restarts).
var rackbootBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rackboot-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	rackbootBin = filepath.Join(dir, "rackboot")
	out, err := exec.Command("go", "build", "-race", "-o", rackbootBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building rackboot: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// server is a rackboot process.
type server struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan error
}

// startRackboot runs rackboot with args and waits until addr accepts
// connections.
func startRackboot(t *testing.T, addr string, args ...string) *server {
	t.Helper()
	return startCommand(t, exec.Command(rackbootBin, args...), accepting(addr))
}

// accepting returns a readiness check for startCommand: addr accepts
// connections.
func accepting(addr string) func() bool {
	return func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
}

// startCommand starts a rackboot command and waits until ready reports
// true.
func startCommand(t *testing.T, cmd *exec.Cmd, ready func() bool) *server {
	t.Helper()
	s := &server{t: t, log: new(bytes.Buffer), done: make(chan error, 1)}
	s.cmd = cmd
	s.cmd.Stderr = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ready() {
			return s
		}
		select {
		case err := <-s.done:
			t.Fatalf("rackboot exited before serving: %v\n%s", err, s.log)
		case <-time.After(20 * time.Millisecond): // polling for readiness
		}
		if time.Now().After(deadline) {
			t.Fatalf("rackboot never became ready:\n%s", s.log)
		}
	}
}

// stop sends sig and waits for the process; SIGTERM must end it cleanly.
func (s *server) stop(sig syscall.Signal) {
	s.t.Helper()
	s.cmd.Process.Signal(sig)
	select {
	case err := <-s.done:
		if sig == syscall.SIGTERM && err != nil {
			s.t.Fatalf("rackboot exited with %v after SIGTERM:\n%s", err, s.log)
		}
	case <-time.After(60 * time.Second):
		s.t.Fatalf("rackboot ignored %v:\n%s", sig, s.log)
	}
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(testenv.LookPath(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func randomFile(t *testing.T, path string, size int, seed uint64) []byte {
	t.Helper()
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStandaloneNBD drives `rackboot nbd` with libnbd's nbdinfo and nbdcopy
// and QEMU's qemu-io, across reconnects and restarts.
func TestStandaloneNBD(t *testing.T) {
	for _, tool := range []string{"nbdinfo", "nbdcopy", "qemu-io"} {
		testenv.LookPath(t, tool)
	}
	dir := t.TempDir()
	imgPath, otherPath := filepath.Join(dir, "img.raw"), filepath.Join(dir, "other.raw")
	img := randomFile(t, imgPath, 16<<20, 1)
	randomFile(t, otherPath, 3<<20+512, 2)
	sum := sha256.Sum256(img)
	state := filepath.Join(dir, "state")
	addr := freeAddr(t)
	args := []string{"nbd", "--listen", addr, "--state", state, "--image", "img=" + imgPath, "--image", "other=" + otherPath}
	uri := func(export string) string { return "nbd://" + addr + "/" + export }

	srv := startRackboot(t, addr, args...)

	// Sessions appear in the list once used.
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 0 64k", "-c", "write -P 0x5c 1048573 7", uri("img@s1"))
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 4096 4096", uri("img@s2"))

	var list struct {
		Exports []struct {
			Name     string `json:"export-name"`
			Size     int64  `json:"export-size"`
			ReadOnly bool   `json:"is_read_only"`
			Flush    bool   `json:"can_flush"`
			Trim     bool   `json:"can_trim"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(runTool(t, "nbdinfo", "--list", "--json", "nbd://"+addr)), &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range list.Exports {
		got[e.Name] = fmt.Sprintf("size=%d ro=%v flush=%v trim=%v", e.Size, e.ReadOnly, e.Flush, e.Trim)
	}
	want := map[string]string{
		"img":    "size=16777216 ro=true flush=false trim=false",
		"other":  "size=3146240 ro=true flush=false trim=false",
		"img@s1": "size=16777216 ro=false flush=true trim=true",
		"img@s2": "size=16777216 ro=false flush=true trim=true",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("nbdinfo --list:\n got %v\nwant %v", got, want)
	}

	// The read-only export is the image, byte for byte.
	copyOut := filepath.Join(dir, "copy.raw")
	runTool(t, "nbdcopy", uri("img"), copyOut)
	if b, _ := os.ReadFile(copyOut); !bytes.Equal(b, img) {
		t.Error("nbdcopy of the read-only export differs from the image")
	}
	// Writes are refused on it.
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write 0 512", uri("img")).CombinedOutput(); err == nil && !strings.Contains(string(out), "failed") {
		t.Errorf("qemu-io wrote to the read-only export:\n%s", out)
	}

	// A reconnect finds the session's writes; other sessions and the image
	// don't see them.
	runTool(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0xab 0 64k", "-c", "read -P 0x5c 1048573 7", uri("img@s1"))
	s2 := filepath.Join(dir, "s2.raw")
	runTool(t, "nbdcopy", uri("img@s2"), s2)
	wantS2 := append([]byte(nil), img...)
	copy(wantS2[4096:8192], bytes.Repeat([]byte{0x11}, 4096))
	if b, _ := os.ReadFile(s2); !bytes.Equal(b, wantS2) {
		t.Error("session s2 doesn't read as the image plus its own write")
	}

	// A clean restart (SIGTERM) and a crash (SIGKILL) both keep sessions.
	srv.stop(syscall.SIGTERM)
	srv = startRackboot(t, addr, args...)
	runTool(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0xab 0 64k", "-c", "read -P 0x5c 1048573 7", uri("img@s1"))
	// qemu-io flushes before it disconnects, so its writes are durable.
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 8M 1M", uri("img@s1"))
	srv.stop(syscall.SIGKILL)
	srv = startRackboot(t, addr, args...)
	runTool(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0xab 0 64k", "-c", "read -P 0x77 8M 1M", uri("img@s1"))

	// Sessions are listed with their size on disk and discarded on demand,
	// while the server runs.
	out := runTool(t, rackbootBin, "nbd", "--state", state, "--sessions")
	if !strings.Contains(out, "img@s1") || !strings.Contains(out, "img@s2") {
		t.Errorf("--sessions output lacks a session:\n%s", out)
	}
	runTool(t, rackbootBin, "nbd", "--state", state, "--discard", "img@s2")
	runTool(t, "nbdcopy", uri("img@s2"), s2)
	if b, _ := os.ReadFile(s2); !bytes.Equal(b, img) {
		t.Error("a discarded session's writes are still there")
	}
	srv.stop(syscall.SIGTERM)

	if b, _ := os.ReadFile(imgPath); sha256.Sum256(b) != sum {
		t.Error("the base image changed")
	}
}

func TestUsageErrors(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"no command":      {nil, "no command"},
		"unknown command": {[]string{"frobnicate"}, `unknown command "frobnicate"`},
		"nbd no state":    {[]string{"nbd", "--image", "a=b"}, "--state is required"},
		"nbd bad image":   {[]string{"nbd", "--state", "x", "--image", "nopath"}, "nbd"},
		"nbd no image":    {[]string{"nbd", "--state", t.TempDir()}, "--image"},
		"check two files": {[]string{"check-config", "a", "b"}, "want one FILE"},
		"serve stray arg": {[]string{"serve", "extra"}, `unexpected argument "extra"`},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), tt.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) = %v; want an error containing %q", tt.args, err, tt.want)
			}
			if exitCode(err) != 2 {
				t.Errorf("exit code %d; want 2", exitCode(err))
			}
		})
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	randomFile(t, filepath.Join(dir, "min.img"), 4096, 3)
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("state_dir: state\nimages:\n  - name: minimal\n    path: min.img\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("state_dir: state\nnbd:\n  lisen: :10809\nimages:\n  - name: minimal\n    path: missing.img\n"), 0o644)

	var out bytes.Buffer
	if err := run(t.Context(), []string{"check-config", good}, &out, &out); err != nil {
		t.Fatalf("check-config good.yaml: %v", err)
	}
	err := run(t.Context(), []string{"check-config", bad}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:3: nbd.lisen: unknown field") {
		t.Errorf("check-config bad.yaml: %v; want the unknown field named with its line", err)
	}
	os.WriteFile(bad, []byte("state_dir: state\nimages:\n  - name: minimal\n    path: missing.img\n"), 0o644)
	err = run(t.Context(), []string{"check-config", bad}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:4: images[0].path") {
		t.Errorf("check-config with a missing image: %v; want file:line: images[0].path", err)
	}
	os.MkdirAll(filepath.Join(dir, "tree"), 0o755)
	os.WriteFile(bad, []byte("state_dir: state\nboot: {tree: tree}\nboards:\n  - {name: b1, mac: \"52:54:00:00:00:01\", arch: amd64, image: nope}\n"), 0o644)
	err = run(t.Context(), []string{"check-config", bad}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), `bad.yaml:4: boards[0].image: unknown image "nope"`) {
		t.Errorf("check-config with an unknown board image: %v", err)
	}
	err = run(t.Context(), []string{"check-config", filepath.Join(dir, "nope.yaml")}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("check-config of a missing file: %v; want the file named", err)
	}
}

// TestServeShutsDownCleanly runs `rackboot serve`, reads the image export
// with nbdcopy while the HTTP server answers, and stops it with SIGTERM:
// the process exits 0 after a clean drain.
func TestServeShutsDownCleanly(t *testing.T) {
	testenv.LookPath(t, "nbdcopy")
	dir := t.TempDir()
	img := randomFile(t, filepath.Join(dir, "min.img"), 1<<20, 4)
	addr, httpAddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "rackboot.yaml")
	os.WriteFile(cfg, fmt.Appendf(nil, "state_dir: state\nlog_level: debug\nnbd:\n  listen: %q\nhttp:\n  listen: %q\nimages:\n  - name: minimal\n    path: min.img\n", addr, httpAddr), 0o644)
	srv := startRackboot(t, addr, "serve", "--config", cfg)
	out := filepath.Join(dir, "out.img")
	runTool(t, "nbdcopy", "nbd://"+addr+"/minimal", out)
	if b, _ := os.ReadFile(out); !bytes.Equal(b, img) {
		t.Error("the image export differs from the image")
	}
	// Sessions are for boards' boot tokens only: NAME@SESSION isn't served.
	if err := exec.Command("nbdinfo", "nbd://"+addr+"/minimal@mine").Run(); err == nil {
		t.Error("serve opened a NAME@SESSION export for an anonymous client")
	}
	srv.stop(syscall.SIGTERM)
	if !strings.Contains(srv.log.String(), "rackboot stopped") {
		t.Errorf("no clean stop in the log:\n%s", srv.log)
	}
}

// TestProcsFloor runs rackboot on one CPU: unless GOMAXPROCS says
// otherwise, it runs with two Ps (see minProcs), and says so when it
// starts.
func TestProcsFloor(t *testing.T) {
	t.Parallel()
	taskset := testenv.LookPath(t, "taskset")
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	cpu := 0
	for !set.IsSet(cpu) {
		cpu++
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	randomFile(t, img, 1<<20, 7)
	for _, tc := range []struct{ env, want string }{
		{"", "procs=2"},
		{"GOMAXPROCS=1", "procs=1"},
	} {
		addr := freeAddr(t)
		cmd := exec.Command(taskset, "-c", strconv.Itoa(cpu), rackbootBin, "nbd", "--listen", addr,
			"--image", "img="+img, "--state", t.TempDir())
		cmd.Env = append(os.Environ(), "GOMAXPROCS=")
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		srv := startCommand(t, cmd, accepting(addr))
		srv.stop(syscall.SIGTERM)
		if !strings.Contains(srv.log.String(), tc.want) {
			t.Errorf("rackboot on one CPU with %q logged no %s:\n%s", tc.env, tc.want, srv.log)
		}
	}
}
