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
	"github.com/rackboot/rackboot/internal/eventtest"
	"github.com/rackboot/rackboot/nbd"
)

// appliance records reports like web's POST /api/v1/report. While code is
// set it answers that instead, and records the step as refused.
type appliance struct {
	mu      sync.Mutex
	steps   []report.Step
	refused []report.Step
	code    atomic.Int32 // answer; 0 means 204
	// got counts the steps taken, refusals those refused.
	got, refusals eventtest.Counter
}

func (a *appliance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/report" || r.Header.Get("Authorization") != "Bearer tok" {
		http.Error(w, "no", http.StatusNotFound)
		return
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	var s report.Step
	if err := dec.Decode(&s); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if c := a.code.Load(); c != 0 {
		a.mu.Lock()
		a.refused = append(a.refused, s)
		a.mu.Unlock()
		a.refusals.Add()
		http.Error(w, "no", int(c))
		return
	}
	a.mu.Lock()
	a.steps = append(a.steps, s)
	a.mu.Unlock()
	a.got.Add()
	w.WriteHeader(http.StatusNoContent)
}

func names(steps []report.Step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.Name)
	}
	return out
}

func (a *appliance) names() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return names(a.steps)
}

// waitFor waits until the appliance has taken n steps and returns them
// all.
func (a *appliance) waitFor(t *testing.T, n int) []report.Step {
	t.Helper()
	a.got.Wait(t, n, "reports taken")
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]report.Step(nil), a.steps...)
}

// refusedSteps returns the steps refused so far.
func (a *appliance) refusedSteps() []report.Step {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]report.Step(nil), a.refused...)
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
	// Ready, were it sent, would go before any heartbeat.
	before := app.waitFor(t, 2)
	if slices.Contains(names(before), StepReady) {
		t.Fatalf("reports before /build is mounted: %v; want heartbeats only", names(before))
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
	k, fk, _, reconnected := newKeeper(t)
	// Each detail says which one it is (ready's is the first), so that a
	// heartbeat tells when it was made.
	var details eventtest.Counter
	a := &Agent{
		Identity:  identity.Identity{Board: "b1", Token: "tok", Appliance: srv.URL},
		Heartbeat: 20 * time.Millisecond,
		Keeper:    k,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), nil)),
		Describe:  func() Facts { return Facts{Board: "b1", Uptime: time.Duration(details.Add())} },
	}
	startAgent(t, a)
	app.refusals.Wait(t, 1, "reports refused") // ready is queued: the reconnect goes after it
	fk.started(t)
	fk.kill(true)
	awaitReconnect(t, reconnected)
	details.Wait(t, 4, "details made") // ready's and 3 heartbeats
	app.refusals.Wait(t, 2, "reports refused")
	made := details.Count()
	app.code.Store(0)
	steps := app.waitFor(t, 4)
	if got, want := names(steps[:4]), []string{StepReady, StepReconnect, StepHeartbeat, StepHeartbeat}; !slices.Equal(got, want) {
		t.Fatalf("reports = %v; want %v first", app.names(), want)
	}
	if got := names(app.refusedSteps()); slices.ContainsFunc(got, func(n string) bool { return n != StepReady }) {
		t.Errorf("refused reports = %v; want ready only (nothing goes before it)", got)
	}
	if steps[1].Duration <= 0 || !strings.Contains(string(steps[1].Detail), `"attempts":1`) {
		t.Errorf("reconnect report = %+v (detail %s); want its duration and attempts", steps[1], steps[1].Detail)
	}
	var first, next Facts
	if err := json.Unmarshal(steps[2].Detail, &first); err != nil {
		t.Fatalf("heartbeat detail %s: %v", steps[2].Detail, err)
	}
	if err := json.Unmarshal(steps[3].Detail, &next); err != nil {
		t.Fatalf("heartbeat detail %s: %v", steps[3].Detail, err)
	}
	// The latest heartbeat goes, not the oldest kept. The one made last may
	// still have been on its way into the outbox, hence made-1.
	if n := int(first.Uptime); n < made-1 {
		t.Errorf("first heartbeat after the appliance came back is detail %d of %d made: heartbeats piled up", n, made)
	}
	if next.Uptime <= first.Uptime {
		t.Errorf("heartbeat detail %d came after %d: heartbeats piled up", next.Uptime, first.Uptime)
	}
}

// A refused token (the board was booted again) is not retried forever.
func TestRefusedReportsAreDropped(t *testing.T) {
	t.Parallel()
	app := &appliance{}
	app.code.Store(http.StatusForbidden)
	srv := httptest.NewServer(app)
	defer srv.Close()
	a := &Agent{
		Identity:  identity.Identity{Board: "b1", Token: "tok", Appliance: srv.URL},
		Heartbeat: 20 * time.Millisecond,
		Describe:  func() Facts { return Facts{} },
	}
	startAgent(t, a)
	// A ready that is retried goes before any heartbeat.
	app.refusals.Wait(t, 3, "reports refused")
	if got, want := names(app.refusedSteps()[:3]), []string{StepReady, StepHeartbeat, StepHeartbeat}; !slices.Equal(got, want) {
		t.Errorf("posts = %v; want %v: ready refused once, then the heartbeats", got, want)
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
// It counts its writes, for tests to wait on.
type blockedWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
	writes  eventtest.Counter
}

func (b *blockedWriter) Write(p []byte) (int, error) {
	<-b.release
	b.mu.Lock()
	defer b.mu.Unlock()
	defer b.writes.Add()
	return b.buf.Write(p)
}

func TestDropWriterNeverBlocks(t *testing.T) {
	t.Parallel()
	bw := &blockedWriter{release: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	d := newDropWriter(ctx, bw)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for range 10 * logQueue {
			d.Write([]byte("line\n"))
		}
	}()
	select {
	case <-wrote:
	case <-time.After(eventtest.Within):
		t.Fatalf("writing to a blocked log did not return in %v", eventtest.Within)
	}
	close(bw.release)
	// Wait for room in the queue, or the next line is dropped too: while
	// lines are queued, another write is coming.
	for {
		n := bw.writes.Count()
		if len(d.lines) == 0 {
			break
		}
		bw.writes.Wait(t, n+1, "writes to the released log")
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
