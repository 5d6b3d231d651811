package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rackboot/rackboot/initramfs/identity"
	"github.com/rackboot/rackboot/initramfs/report"
	"github.com/rackboot/rackboot/nbd"
)

// appliance records reports like web's POST /api/v1/report.
type appliance struct {
	mu    sync.Mutex
	steps []report.Step
	code  atomic.Int32 // answer; 0 means 204
}

func (a *appliance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/report" || r.Header.Get("Authorization") != "Bearer tok" {
		http.Error(w, "no", http.StatusNotFound)
		return
	}
	if c := a.code.Load(); c != 0 {
		http.Error(w, "no", int(c))
		return
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	var s report.Step
	if err := dec.Decode(&s); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.steps = append(a.steps, s)
	a.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (a *appliance) names() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, s := range a.steps {
		out = append(out, s.Name)
	}
	return out
}

func (a *appliance) waitFor(t *testing.T, n int) []report.Step {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		if len(a.steps) >= n {
			out := append([]report.Step(nil), a.steps...)
			a.mu.Unlock()
			return out
		}
		a.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("appliance got %v; want %d reports", a.names(), n)
	return nil
}

func startAgent(t *testing.T, a *Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}

func TestReadyAfterBuildMountThenHeartbeats(t *testing.T) {
	t.Parallel()
	app := &appliance{}
	srv := httptest.NewServer(app)
	defer srv.Close()
	var mountedNow atomic.Bool
	a := &Agent{
		Identity:  identity.Identity{Board: "b1", Token: "tok", Appliance: srv.URL + "/", BuildDisk: "/dev/vda1"},
		Heartbeat: 20 * time.Millisecond,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), nil)),
		Describe:  func() Facts { return Facts{Board: "b1", Kernel: "6.1"} },
		Mounted:   func(p string) bool { return p == DefaultBuildMount && mountedNow.Load() },
	}
	startAgent(t, a)
	time.Sleep(100 * time.Millisecond)
	before := app.names()
	if slices.Contains(before, StepReady) || len(before) == 0 {
		t.Fatalf("reports before /build is mounted: %v; want heartbeats only", before)
	}
	mountedNow.Store(true)
	var steps []report.Step
	for n := len(before) + 1; ; n++ {
		steps = app.waitFor(t, n)
		if i := slices.IndexFunc(steps, func(s report.Step) bool { return s.Name == StepReady }); i >= 0 && i < len(steps)-1 {
			steps = steps[i:]
			break
		}
	}
	if steps[1].Name != StepHeartbeat {
		t.Errorf("reports = %v; want heartbeats, ready once /build is mounted, heartbeats", app.names())
	}
	var f Facts
	if err := json.Unmarshal(steps[1].Detail, &f); err != nil {
		t.Fatalf("heartbeat detail %s: %v", steps[1].Detail, err)
	}
	if diff := cmp.Diff(Facts{Board: "b1", Kernel: "6.1"}, f); diff != "" {
		t.Errorf("heartbeat detail (-want +got):\n%s", diff)
	}
}

// Ready and reconnect reports wait for an appliance that is away;
// heartbeats meanwhile are dropped, not piled up.
func TestReportsSurviveAnAbsentAppliance(t *testing.T) {
	t.Parallel()
	app := &appliance{}
	app.code.Store(http.StatusServiceUnavailable)
	srv := httptest.NewServer(app)
	defer srv.Close()
	k, fk, _, _ := newKeeper(t)
	a := &Agent{
		Identity:  identity.Identity{Board: "b1", Token: "tok", Appliance: srv.URL},
		Heartbeat: 200 * time.Millisecond,
		Keeper:    k,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), nil)),
		Describe:  func() Facts { return Facts{Board: "b1"} },
	}
	startAgent(t, a)
	fk.started(t)
	fk.kill(true)
	time.Sleep(1500 * time.Millisecond) // several heartbeats, retries of ready
	app.code.Store(0)
	steps := app.waitFor(t, 3)
	got := app.names()
	if got[0] != StepReady || got[1] != StepReconnect || got[2] != StepHeartbeat {
		t.Errorf("reports = %v; want ready, nbd_reconnect, then heartbeats", got)
	}
	if steps[1].Duration <= 0 || !strings.Contains(string(steps[1].Detail), `"attempts":1`) {
		t.Errorf("reconnect report = %+v (detail %s); want its duration and attempts", steps[1], steps[1].Detail)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(app.names()); n > 4 {
		t.Errorf("%d reports right after the appliance came back: heartbeats piled up: %v", n, app.names())
	}
}

// A refused token (the board was booted again) is not retried forever.
func TestRefusedReportsAreDropped(t *testing.T) {
	t.Parallel()
	app := &appliance{}
	app.code.Store(http.StatusForbidden)
	srv := httptest.NewServer(app)
	defer srv.Close()
	var posts atomic.Int32
	c := &report.Client{URL: srv.URL + "/api/v1/report", Token: "tok"}
	a := &Agent{
		Identity:  identity.Identity{Board: "b1", Token: "tok", Appliance: srv.URL},
		Heartbeat: time.Hour,
		Describe:  func() Facts { return Facts{} },
		Report: func(ctx context.Context, s report.Step) error {
			posts.Add(1)
			return c.Post(ctx, s)
		},
	}
	startAgent(t, a)
	time.Sleep(300 * time.Millisecond)
	if n := posts.Load(); n != 1 {
		t.Errorf("%d posts; want 1 (ready, refused once)", n)
	}
}

func TestParseConfig(t *testing.T) {
	t.Parallel()
	env := map[string]string{"RACKBOOT_AGENT_HEARTBEAT": "10s", "RACKBOOT_AGENT_BOOT_JSON": "/tmp/b.json"}
	c, err := parseConfig([]string{"--heartbeat", "5s", "--mlock=false"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{BootJSON: "/tmp/b.json", Heartbeat: 5 * time.Second, BuildMount: "/build", PollInterval: DefaultPollInterval, LogLevel: "info"}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("parseConfig (-want +got):\n%s", diff)
	}
	for name, args := range map[string][]string{"negative": {"--heartbeat", "-1s"}, "extra": {"x"}, "unknown": {"--nope"}} {
		if _, err := parseConfig(args, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("parseConfig %s: no error", name)
		}
	}
	if _, err := parseConfig(nil, func(k string) string { return map[string]string{"RACKBOOT_AGENT_POLL": "soon"}[k] }, io.Discard); err == nil {
		t.Error("parseConfig with a bad environment value: no error")
	}
}

// blockedWriter blocks until released, like a journald stuck on the root.
type blockedWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (b *blockedWriter) Write(p []byte) (int, error) {
	<-b.release
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func TestDropWriterNeverBlocks(t *testing.T) {
	t.Parallel()
	bw := &blockedWriter{release: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	d := newDropWriter(ctx, bw)
	start := time.Now()
	for range 10 * logQueue {
		d.Write([]byte("line\n"))
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("writing to a blocked log took %v", el)
	}
	close(bw.release)
	for len(d.lines) > 0 {
		time.Sleep(time.Millisecond)
	}
	d.Write([]byte("after\n"))
	cancel()
	d.wait()
	bw.mu.Lock()
	defer bw.mu.Unlock()
	out := bw.buf.String()
	if !strings.Contains(out, "log lines dropped") || !strings.HasSuffix(out, "after\n") {
		t.Errorf("log after the block:\n%.300s...", out)
	}
}

func TestFactsRedactToken(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ export, token, image, redacted string }{
		{"root@vmtoken1", "vmtoken1", "root", "root@TOKEN"},
		{"abc123", "abc123", "", "TOKEN"},
		{"debian", "tok", "", "debian"},
	} {
		if got := image(tc.export, tc.token); got != tc.image {
			t.Errorf("image(%q, %q) = %q; want %q", tc.export, tc.token, got, tc.image)
		}
		if got := redact(tc.export, tc.token); got != tc.redacted {
			t.Errorf("redact(%q, %q) = %q; want %q", tc.export, tc.token, got, tc.redacted)
		}
	}
}

func TestCheckExport(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbd.Server{Resolver: checkResolver{}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	var out bytes.Buffer
	if err := checkExport(t.Context(), []string{"nbd://" + ln.Addr().String() + "/ok"}, &out); err != nil || !strings.Contains(out.String(), "export ok: 4096 bytes") {
		t.Errorf("check-export of a served export: %v, %q", err, out.String())
	}
	if err := checkExport(t.Context(), []string{"nbd://" + ln.Addr().String() + "/other"}, &out); err == nil {
		t.Error("check-export of a refused export succeeded")
	}
}

type checkResolver struct{}

func (checkResolver) Open(_ context.Context, name string, _ netip.AddrPort) (*nbd.Export, error) {
	if name != "ok" {
		return nil, fs.ErrNotExist
	}
	return &nbd.Export{Name: name, Device: memDev(make([]byte, 4096)), ReadOnly: true}, nil
}

func (checkResolver) List(context.Context, netip.AddrPort) ([]nbd.ExportInfo, error) { return nil, nil }

type memDev []byte

func (m memDev) ReadAt(p []byte, off int64) (int, error)  { return copy(p, m[off:]), nil }
func (m memDev) WriteAt(p []byte, off int64) (int, error) { return 0, nbd.ErrReadOnly }
func (m memDev) Size() int64                              { return int64(len(m)) }
func (m memDev) Sync() error                              { return nil }
