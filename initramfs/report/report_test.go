package report

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/rackboot/rackboot/internal/eventtest"
)

// appliance is a report endpoint that accepts token's well-formed
// reports and keeps them in order.
type appliance struct {
	*httptest.Server
	mu  sync.Mutex
	got []Step
}

func newAppliance(t *testing.T, token string) *appliance {
	a := &appliance{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/report" || r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		var s Step
		if err := dec.Decode(&s); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.mu.Lock()
		a.got = append(a.got, s)
		a.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(a.Close)
	return a
}

// steps returns the reports received so far.
func (a *appliance) steps() []Step {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

func TestReports(t *testing.T) {
	t.Parallel()
	srv := newAppliance(t, "tok")
	var console eventtest.Buffer
	r := &Reporter{URL: srv.URL + "/api/v1/report", Token: "tok", Console: &console}
	r.Record("mount", time.Millisecond, nil)
	r.Record("modules", 2*time.Millisecond, errors.New("no nbd.ko"))
	r.Online()
	r.RecordDetail("identify", 0, []byte(`{"cpus":2}`))
	r.Flush(t.Context())
	want := []Step{
		{Name: "mount", Status: "ok", Duration: time.Millisecond},
		{Name: "modules", Status: "failed", Duration: 2 * time.Millisecond, Error: "no nbd.ko"},
		{Name: "identify", Status: "ok", Detail: json.RawMessage(`{"cpus":2}`)},
	}
	if diff := cmp.Diff(want, srv.steps()); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
	if !strings.Contains(console.String(), "rackboot: step=modules status=failed dur=2ms err=no nbd.ko\n") {
		t.Errorf("console:\n%s", console.String())
	}
}

// A dead appliance (a listener that never answers) costs at most the
// failures allowed, each bounded by the timeout, and once the reporter has
// given up, later steps go to the console without another connection.
func TestDeadApplianceIsBounded(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // accepts into the backlog, never answers
	var dials atomic.Int32
	var console eventtest.Buffer
	r := &Reporter{
		URL:     "http://" + ln.Addr().String() + "/api/v1/report",
		Token:   "t",
		Timeout: 100 * time.Millisecond,
		Console: &console,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	r.Online()
	for range 10 {
		r.Record("step", 0, nil)
	}
	// Flush returns once the reporter has given up; were a report not
	// bounded by its timeout, the context would end it instead, and
	// the console would not say so.
	ctx, cancel := context.WithTimeout(t.Context(), eventtest.Within)
	defer cancel()
	r.Flush(ctx)
	if got := dials.Load(); got != DefaultMaxFailures {
		t.Errorf("connections to a dead appliance for 10 steps: %d; want %d", got, DefaultMaxFailures)
	}
	r.Record("late", 0, nil)
	r.Flush(ctx)
	if got := dials.Load(); got != DefaultMaxFailures {
		t.Errorf("connections after giving up: %d more", got-DefaultMaxFailures)
	}
	for _, want := range []string{"appliance unreachable: reporting stopped", "step=late status=ok"} {
		if !strings.Contains(console.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, console.String())
		}
	}
}

// A reporter that stopped while the appliance was away keeps the failed
// steps, and Retry sends them: the cause of a failed boot isn't lost to
// an appliance restart.
func TestRetrySendsHeldFailures(t *testing.T) {
	t.Parallel()
	srv := newAppliance(t, "t")
	var away atomic.Bool
	away.Store(true)
	r := &Reporter{
		URL: srv.URL + "/api/v1/report", Token: "t",
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if away.Load() {
				return nil, errors.New("connection refused")
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	r.Online()
	r.Record("network", 0, nil)
	r.Record("nbd", 0, nil)
	r.Flush(t.Context()) // both refused: reporting stops
	r.Record("disk", 0, errors.New("no disk matches"))
	r.Record("late", 0, nil)
	away.Store(false)
	r.Retry()
	r.Flush(t.Context())
	want := []Step{{Name: "disk", Status: StatusFailed, Error: "no disk matches"}}
	if diff := cmp.Diff(want, srv.steps()); diff != "" {
		t.Errorf("sent after Retry (-want +got):\n%s", diff)
	}
}

func TestClientPost(t *testing.T) {
	t.Parallel()
	codes := map[string]int{"/ok": http.StatusNoContent, "/gone": http.StatusForbidden, "/broken": http.StatusInternalServerError}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") != "test-agent" {
			http.Error(w, "agent", http.StatusBadRequest)
			return
		}
		w.WriteHeader(codes[r.URL.Path])
	}))
	defer srv.Close()
	for path, want := range map[string]error{"/ok": nil, "/gone": ErrRefused, "/broken": nil} {
		c := &Client{URL: srv.URL + path, Token: "t", UserAgent: "test-agent"}
		err := c.Post(t.Context(), Step{Name: "heartbeat", Status: StatusOK})
		switch {
		case path == "/broken" && err == nil:
			t.Errorf("Post to %s: no error", path)
		case path != "/broken" && !errors.Is(err, want):
			t.Errorf("Post to %s = %v; want %v", path, err, want)
		}
	}
}
