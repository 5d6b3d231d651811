package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/rackboot/rackboot/initramfs/identity"
	"github.com/rackboot/rackboot/initramfs/report"
	"golang.org/x/sync/errgroup"
)

// Defaults for Agent's zero fields.
const (
	// DefaultHeartbeat is the interval between heartbeats.
	DefaultHeartbeat = 30 * time.Second
	// DefaultBuildMount is where the initramfs mounts the build disk.
	DefaultBuildMount = "/build"
	// DefaultReportTimeout bounds one report.
	DefaultReportTimeout = 5 * time.Second
	// mountPoll is how often the agent looks for the build disk's mount.
	mountPoll = time.Second
)

// Step names the agent reports.
const (
	StepReady     = "ready"
	StepHeartbeat = "heartbeat"
	StepReconnect = "nbd_reconnect"
)

// Agent reports to the appliance and keeps the root connected. Set the
// fields, then call Run once.
type Agent struct {
	// Identity is the boot's boot.json, read once at start.
	Identity identity.Identity
	// Heartbeat is the interval between heartbeats; zero means
	// DefaultHeartbeat.
	Heartbeat time.Duration
	// BuildMount is the build disk's mount point, which must be mounted
	// before "ready" when Identity.BuildDisk is set; empty means
	// DefaultBuildMount.
	BuildMount string
	// Keeper keeps the root connected; nil watches nothing (a root that
	// isn't NBD, or tests).
	Keeper *Keeper
	// Logger receives what the agent does; nil discards.
	Logger *slog.Logger
	// Version is reported in the heartbeat and the User-Agent.
	Version string

	// Test seams; nil means the real thing.
	//
	// Report sends one step (report.Client to Identity.Appliance).
	Report func(ctx context.Context, s report.Step) error
	// Describe returns the heartbeat's detail (describe from /proc and
	// /sys).
	Describe func() Facts
	// Mounted reports whether a path is a mount point
	// (/proc/self/mountinfo).
	Mounted func(path string) bool
}

func (a *Agent) logger() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger
}

// Run runs until ctx is done and returns nil then, or the Keeper's error.
func (a *Agent) Run(ctx context.Context) error {
	out := &outbox{wake: make(chan struct{}, 1)}
	g, ctx := errgroup.WithContext(ctx)
	if k := a.Keeper; k != nil {
		prev := k.OnReconnect
		k.OnReconnect = func(r Reconnect) {
			if prev != nil {
				prev(r)
			}
			detail, _ := json.Marshal(struct {
				Attempts int    `json:"attempts"`
				LastErr  string `json:"last_error,omitempty"`
			}{r.Attempts, r.LastErr})
			out.add(report.Step{Name: StepReconnect, Status: report.StatusOK, Duration: r.Down, Detail: detail}, true)
		}
		g.Go(func() error { return k.Run(ctx) })
	}
	if a.Report == nil && (a.Identity.Appliance == "" || a.Identity.Token == "") {
		a.logger().Warn("boot.json names no appliance or token: not reporting")
	} else {
		g.Go(func() error { a.produce(ctx, out); return nil })
		g.Go(func() error { a.send(ctx, out); return nil })
	}
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// produce queues "ready" once the build disk is mounted, then a heartbeat
// every interval.
func (a *Agent) produce(ctx context.Context, out *outbox) {
	log := a.logger()
	start := time.Now()
	mnt := a.BuildMount
	if mnt == "" {
		mnt = DefaultBuildMount
	}
	isMounted := a.Mounted
	if isMounted == nil {
		isMounted = mounted
	}
	ready := a.Identity.BuildDisk == ""
	waiting := false
	every := orDefault(a.Heartbeat, DefaultHeartbeat)
	nextBeat := time.Now().Add(every)
	for {
		if !ready && isMounted(mnt) {
			ready = true
		} else if !ready && !waiting {
			log.Info("waiting for the build disk", "file", mnt, "dev", a.Identity.BuildDisk)
			waiting = true
		}
		if ready && start != (time.Time{}) {
			log.Info("ready", "dur", time.Since(start))
			out.add(report.Step{Name: StepReady, Status: report.StatusOK, Duration: time.Since(start), Detail: a.detail()}, true)
			start = time.Time{}
			nextBeat = time.Now().Add(every)
		}
		if !time.Now().Before(nextBeat) {
			out.add(report.Step{Name: StepHeartbeat, Status: report.StatusOK, Detail: a.detail()}, false)
			nextBeat = time.Now().Add(every)
		}
		wait := time.Until(nextBeat)
		if !ready {
			wait = min(wait, mountPoll)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (a *Agent) detail() json.RawMessage {
	var f Facts
	if a.Describe != nil {
		f = a.Describe()
	} else {
		var st Status
		if a.Keeper != nil {
			st = a.Keeper.Status()
		}
		f = describe(os.DirFS("/"), a.Identity, st)
		f.Agent = a.Version
	}
	b, err := json.Marshal(f)
	if err != nil || len(b) > report.MaxDetail {
		return nil
	}
	return b
}

// send delivers the outbox: steps that must arrive in order, retried with
// a backoff, then the latest heartbeat, once.
func (a *Agent) send(ctx context.Context, out *outbox) {
	log := a.logger()
	post := a.Report
	if post == nil {
		c := &report.Client{URL: reportURL(a.Identity.Appliance), Token: a.Identity.Token, UserAgent: "rackboot-agent/" + a.Version}
		post = c.Post
	}
	postOne := func(s report.Step) error {
		rctx, cancel := context.WithTimeout(ctx, DefaultReportTimeout)
		defer cancel()
		return post(rctx, s)
	}
	var backoff time.Duration
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-out.wake:
		}
		for {
			it, ok := out.next()
			if !ok {
				break
			}
			s := it.step
			err := postOne(s)
			switch {
			case err == nil:
				out.done(it)
				if failing {
					log.Info("appliance reachable again")
					failing = false
				}
				backoff = 0
				continue
			case errors.Is(err, report.ErrRefused):
				// Another boot of this board is current: nothing this
				// token sends will be taken.
				log.Warn("report refused", "step", s.Name, "err", err)
				out.done(it)
				continue
			case !it.must:
				out.done(it) // the next heartbeat is coming
				if !failing {
					log.Warn("appliance unreachable", "step", s.Name, "err", err)
					failing = true
				}
				continue
			}
			if !failing {
				log.Warn("appliance unreachable", "step", s.Name, "err", err)
				failing = true
			}
			backoff = min(max(2*backoff, time.Second), orDefault(a.Heartbeat, DefaultHeartbeat))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

func reportURL(appliance string) string {
	if appliance == "" {
		return ""
	}
	for len(appliance) > 0 && appliance[len(appliance)-1] == '/' {
		appliance = appliance[:len(appliance)-1]
	}
	return appliance + "/api/v1/report"
}

// outbox holds the reports to send: steps that must be delivered, in
// order, and the latest heartbeat. It is safe for concurrent use.
type outbox struct {
	mu   sync.Mutex
	seq  uint64
	must []item
	beat *item
	wake chan struct{}
}

type item struct {
	step report.Step
	must bool
	seq  uint64
}

// maxMust bounds the steps kept while the appliance is away; the oldest
// go first.
const maxMust = 64

func (o *outbox) add(s report.Step, must bool) {
	o.mu.Lock()
	o.seq++
	it := item{step: s, must: must, seq: o.seq}
	if must {
		if len(o.must) == maxMust {
			o.must = o.must[1:]
		}
		o.must = append(o.must, it)
	} else {
		o.beat = &it
	}
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// next returns the item to send next.
func (o *outbox) next() (item, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.must) > 0 {
		return o.must[0], true
	}
	if o.beat != nil {
		return *o.beat, true
	}
	return item{}, false
}

// done removes it, if it is still queued.
func (o *outbox) done(it item) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.beat != nil && o.beat.seq == it.seq {
		o.beat = nil
	}
	if len(o.must) > 0 && o.must[0].seq == it.seq {
		o.must = o.must[1:]
	}
}
