package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// row is one measurement of the table.
type row struct {
	key   string
	label string
	unit  string
	lower bool // lower is better
	// cpuUnit is the unit of the row's server CPU time, per I/O or per GB;
	// empty for the rows that are not a time-based fio run.
	cpuUnit string
}

// Units of the server CPU time table.
const (
	cpuPerIO = "µs/IO"
	cpuPerGB = "s/GB"
)

// rows returns the table's measurements in order.
func (c config) rows() []row {
	return []row{
		{key: "seq", label: fmt.Sprintf("seq read 1 MiB QD%d, whole image", c.seqDepth), unit: "MiB/s", cpuUnit: cpuPerGB},
		{key: "rr1", label: "rand read 4 KiB QD1", unit: "IOPS", cpuUnit: cpuPerIO},
		{key: "rr32", label: "rand read 4 KiB QD32", unit: "IOPS", cpuUnit: cpuPerIO},
		{key: "rw1", label: "rand write 4 KiB QD1, write layer", unit: "IOPS", cpuUnit: cpuPerIO},
		{key: "rw32", label: "rand write 4 KiB QD32, write layer", unit: "IOPS", cpuUnit: cpuPerIO},
		{key: "clients", label: fmt.Sprintf("%d clients seq read 1 MiB, whole image", c.clients), unit: "MiB/s", cpuUnit: cpuPerGB},
		{key: "connects", label: fmt.Sprintf("%d simultaneous connects, greeting <= %v", c.connects, c.greetWithin), unit: "greeted"},
		{key: "cost", label: fmt.Sprintf("write layer after %s of rand 4 KiB writes", mib(c.costBytes)), unit: "MiB", lower: true},
	}
}

// results holds the figures by row key and server (one per round), and
// what went wrong.
type results struct {
	servers  []string
	vals     benchkit.Figures
	cpu      benchkit.Figures    // server CPU time per unit of work, like vals
	problems map[string][]string // by server
}

func newResults(servers []string) *results {
	return &results{servers: servers, vals: benchkit.Figures{}, cpu: benchkit.Figures{}, problems: map[string][]string{}}
}

func (r *results) set(key, server string, v float64) { r.vals.Add(key, server, v) }

// setCPU records the server's CPU time per unit of work (the row's cpuUnit)
// in a row.
func (r *results) setCPU(key, server string, v float64) { r.cpu.Add(key, server, v) }

// get returns the median of the figures of one row and server.
func (r *results) get(key, server string) (float64, bool) { return r.vals.Median(key, server) }

// getCPU returns the median CPU time per unit of work of one row and server.
func (r *results) getCPU(key, server string) (float64, bool) { return r.cpu.Median(key, server) }

func (r *results) problem(server, msg string) { r.problems[server] = append(r.problems[server], msg) }

const (
	// fioAttempts is how often a time-based row is tried when fio times out.
	fioAttempts = 2
	// clientStagger spreads the connects of the many-clients row (each
	// client starts after a random delay up to this), as boards that power
	// on together reach their NBD connect at slightly different times.
	// Simultaneous connects are the connect-storm row's business.
	clientStagger = 320 * time.Millisecond
)

// bench runs the whole benchmark.
type bench struct {
	cfg   config
	log   *slog.Logger
	dir   string // the run's temporary directory
	image string // the base image every server serves
	res   *results
}

func (b *bench) run(ctx context.Context) (*report, error) {
	rep := &report{cfg: b.cfg, rows: b.cfg.rows(), res: b.res, started: time.Now()}
	rep.machine = benchkit.MachineInfo()
	rep.network = networkInfo()
	rep.tools = toolVersions(ctx, b.cfg.rackboot)
	rep.loadStart = benchkit.LoadAverage()
	if l, err := strconv.ParseFloat(rep.loadStart, 64); err == nil && l > float64(runtime.NumCPU())/2 {
		b.log.Warn("machine is busy; figures will be noisy", "load", l, "cores", runtime.NumCPU())
	}

	b.image = filepath.Join(b.dir, "base.img")
	b.log.Info("creating base image", "file", b.image, "bytes", b.cfg.size)
	// Read-only: no server may write to it.
	if err := benchkit.CreateRandomFile(ctx, b.image, b.cfg.size, 0o444, "image"); err != nil {
		return nil, err
	}
	var err error
	if rep.sumBefore, err = benchkit.SHA256File(b.image, "image"); err != nil {
		return nil, err
	}
	// Every server reads the image from memory, whatever the kernel's
	// reclaim thinks of pages a sparse random row leaves idle.
	hold, err := benchkit.HoldInCache(b.image)
	if err != nil {
		b.log.Warn("base image not held in the page cache", "err", err)
		rep.cacheErr = err
	} else {
		defer hold.Release()
	}
	b.log.Info("measuring loopback TCP", "dur", b.cfg.loopback)
	if rep.loopback, err = loopbackBandwidth(ctx, b.cfg.loopback); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		b.log.Error("loopback measurement failed", "err", err)
	}
	// Servers that aren't installed are left out once and for all.
	var servers []string
	bins := map[string]string{}
	for _, name := range b.cfg.servers {
		bin, err := specs()[name].lookPath(b.cfg)
		if err != nil {
			b.log.Warn("server not measured", "server", name, "err", err)
			b.res.problem(name, "not measured: "+err.Error())
			continue
		}
		servers = append(servers, name)
		bins[name] = bin
	}
	for round := range b.cfg.count {
		order := rotate(servers, round)
		b.log.Info("round", "round", round+1, "order", order)
		if err := b.round(ctx, order, bins); err != nil {
			return nil, err
		}
	}
	if hold != nil {
		if rep.cached, err = hold.Resident(); err != nil {
			rep.cacheErr = err
		}
	}
	if rep.sumAfter, err = benchkit.SHA256File(b.image, "image"); err != nil {
		return nil, err
	}
	rep.imageChanged = rep.sumAfter != rep.sumBefore
	rep.loadEnd = benchkit.LoadAverage()
	rep.elapsed = time.Since(rep.started)
	return rep, nil
}

// instance is one running server.
type instance struct {
	g       *group
	addr    string
	layer   string // directory of the write layer
	stopped bool
}

func (i *instance) uri(export string) string { return "nbd://" + i.addr + "/" + export }

func (i *instance) stop() error {
	if i.stopped {
		return nil
	}
	i.stopped = true
	return i.g.Stop()
}

// start starts a fresh server with an empty write layer under
// dir/NAME-PHASE and waits until it greets clients.
func (b *bench) start(ctx context.Context, spec *serverSpec, bin, phase string) (*instance, error) {
	dir := filepath.Join(b.dir, spec.name+"-"+phase)
	layer := filepath.Join(dir, "layer")
	if err := os.MkdirAll(layer, 0o755); err != nil {
		return nil, fmt.Errorf("creating server directory: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	si := startInfo{bin: bin, image: b.image, layer: layer, dir: dir, port: port, pidFile: filepath.Join(dir, "server.pid")}
	argv, env, err := spec.command(si)
	if err != nil {
		return nil, err
	}
	argv = pinned(b.cfg.serverCPUs, argv)
	b.log.Info("starting server", "server", spec.name, "argv", argv, "env", env)
	g, err := startServer(ctx, argv, env, dir, filepath.Join(dir, "server.log"), si.pidFile, spec.daemon)
	if err != nil {
		return nil, err
	}
	inst := &instance{g: g, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), layer: layer}
	if err := waitGreeting(ctx, inst.addr, g, 20*time.Second); err != nil {
		_ = inst.stop()
		return nil, err
	}
	return inst, nil
}

// measure runs one row for one server and records its figure or its failure.
// It returns an error only when ctx is done.
func (b *bench) measure(ctx context.Context, server, key string, f func() (float64, error)) error {
	start := time.Now()
	v, err := f()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		b.log.Error("measurement failed", "server", server, "row", key, "err", err)
		b.res.problem(server, key+": "+err.Error())
		return nil
	}
	b.res.set(key, server, v)
	b.log.Info("measured", "server", server, "row", key, "value", v, "dur", time.Since(start).Round(time.Millisecond))
	return nil
}

// rotate returns s rotated left by n places: round n starts with the
// server round 0 had at index n.
func rotate(s []string, n int) []string {
	if len(s) == 0 {
		return nil
	}
	n %= len(s)
	return append(append([]string(nil), s[n:]...), s[:n]...)
}

// running is a server started for a round.
type running struct {
	spec *serverSpec
	inst *instance
}

// round measures every row on every server in order (bins holds their
// binaries, by name): the servers run side by side, idle but for the one
// being measured, and each row is measured on all of them before the next
// row starts, so that a change in the machine's load over the run (a
// shared machine's neighbours) falls on every server alike rather than on
// whichever ran at that time. It returns an error only when ctx is done;
// failures are recorded in the results.
func (b *bench) round(ctx context.Context, order []string, bins map[string]string) error {
	var servers []running
	stopAll := func() {
		for _, r := range servers {
			if err := r.inst.stop(); err != nil {
				b.log.Warn("stopping server", "server", r.spec.name, "err", err)
			}
		}
	}
	defer stopAll()
	for _, name := range order {
		spec := specs()[name]
		inst, err := b.start(ctx, spec, bins[name], "main")
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.log.Error("server failed to start", "server", name, "err", err)
			b.res.problem(name, "start: "+err.Error())
			continue
		}
		servers = append(servers, running{spec, inst})
	}

	// First, while the servers are fresh: a rack powering on at once.
	for _, r := range servers {
		err := b.measure(ctx, r.spec.name, "connects", func() (float64, error) {
			n, err := connectStorm(ctx, r.inst.addr, b.cfg.connects, b.cfg.greetWithin)
			if err != nil && ctx.Err() == nil {
				b.log.Warn("connect storm", "server", r.spec.name, "greeted", n, "err", err)
				b.res.problem(r.spec.name, "connects: "+err.Error())
				err = nil
			}
			return float64(n), err
		})
		if err != nil {
			return err
		}
	}
	for _, j := range b.fioRows() {
		for _, r := range servers {
			if err := b.fioRow(ctx, r, j); err != nil {
				return err
			}
		}
	}
	// The cost row starts each server afresh, alone.
	stopAll()
	for _, name := range order {
		if err := b.cost(ctx, specs()[name], bins[name]); err != nil {
			return err
		}
	}
	return nil
}

// fioRowSpec is a time-based fio row; the job's export is filled in per
// server.
type fioRowSpec struct {
	key   string
	job   fioJob
	bw    bool // report bandwidth, not IOPS
	write bool // on the copy-on-write export
}

// fioRows returns the time-based fio rows, in the order they run.
func (b *bench) fioRows() []fioRowSpec {
	rows := []fioRowSpec{
		{key: "seq", job: fioJob{rw: "read", bs: "1M", depth: b.cfg.seqDepth}, bw: true},
		{key: "rr1", job: fioJob{rw: "randread", bs: "4k", depth: 1}},
		{key: "rr32", job: fioJob{rw: "randread", bs: "4k", depth: 32}},
		{key: "clients", job: fioJob{rw: "read", bs: "1M", depth: 1, jobs: b.cfg.clients, stagger: clientStagger}, bw: true},
		{key: "rw1", job: fioJob{rw: "randwrite", bs: "4k", depth: 1}, write: true},
		{key: "rw32", job: fioJob{rw: "randwrite", bs: "4k", depth: 32}, write: true},
	}
	for i := range rows {
		rows[i].job.name = rows[i].key
		rows[i].job.runtime, rows[i].job.ramp = b.cfg.runtime, b.cfg.ramp
	}
	return rows
}

// fioRow measures one time-based row on one running server.
func (b *bench) fioRow(ctx context.Context, r running, j fioRowSpec) error {
	job := j.job
	job.cpus = b.cfg.clientCPUs
	job.uri = r.inst.uri(r.spec.readExport)
	if j.write {
		job.uri = r.inst.uri(r.spec.writeExport)
	}
	fioDir := filepath.Dir(r.inst.layer)
	return b.measure(ctx, r.spec.name, j.key, func() (float64, error) {
		var res fioResult
		var cpu []cpuPoint
		var err error
		for attempt := 1; attempt <= fioAttempts; attempt++ {
			if !r.inst.g.Alive() {
				return 0, fmt.Errorf("server is gone%s", r.inst.g.LogTail())
			}
			meter := r.inst.g.meter()
			res, err = runFio(ctx, fioDir, job)
			cpu = meter.end()
			if !errors.Is(err, errHung) || attempt == fioAttempts {
				break
			}
			b.log.Warn("fio timed out; retrying", "server", r.spec.name, "row", j.key, "attempt", attempt, "err", err)
			b.res.problem(r.spec.name, fmt.Sprintf("%s: attempt %d of %d timed out (%v)", j.key, attempt, fioAttempts, err))
		}
		if err == nil {
			b.serverCPU(r.spec.name, j.key, j.bw, job, res, cpu)
		}
		if j.bw {
			return res.bw / (1 << 20), err
		}
		return res.iops, err
	})
}

// serverCPU records the server's CPU time per I/O (µs) or per GB (s) in a
// time-based fio run: its CPU time per second over the window cpuWindow
// picks, over fio's IOPS or bandwidth, which count the measured part only.
func (b *bench) serverCPU(server, key string, bw bool, job fioJob, r fioResult, points []cpuPoint) {
	from, to := cpuWindow(r, job.runtime, job.stagger)
	rate, err := cpuRate(points, from, to)
	if err == nil && (r.iops <= 0 || r.bw <= 0) {
		err = errors.New("fio reports no I/O")
	}
	if err != nil {
		b.log.Error("server CPU time not measured", "server", server, "row", key, "err", err)
		b.res.problem(server, key+": server CPU time: "+err.Error())
		return
	}
	v := rate / r.iops * 1e6
	if bw {
		v = rate / (r.bw / 1e9)
	}
	b.res.setCPU(key, server, v)
	b.log.Info("server CPU", "server", server, "row", key, "cores", rate, "per_unit", v, "window", to.Sub(from).Round(time.Millisecond))
}

// cost measures the allocated size of the write layer after cfg.costBytes of
// distinct random 4 KiB writes, on a fresh server. The layer is measured
// while fio's connection is still open (nbd-server drops its diff on
// disconnect), again after the disconnect, and after the server stopped
// (which catches a server that holds writes in memory until then); the
// largest figure counts.
func (b *bench) cost(ctx context.Context, spec *serverSpec, bin string) error {
	inst, err := b.start(ctx, spec, bin, "cost")
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.log.Error("server failed to start", "server", spec.name, "err", err)
		b.res.problem(spec.name, "start for cost: "+err.Error())
		return nil
	}
	defer inst.stop()
	return b.measure(ctx, spec.name, "cost", func() (float64, error) {
		var connected int64
		var holdErr error
		job := fioJob{
			name:   "cost",
			uri:    inst.uri(spec.writeExport),
			rw:     "randwrite", // fio's random map (on by default) makes every 4 KiB block distinct
			bs:     "4k",
			depth:  16,
			ioSize: b.cfg.costBytes,
			hold:   func() { connected, holdErr = layerBytes(inst.layer, inst.g.PGID) },
			cpus:   b.cfg.clientCPUs,
		}
		if _, err := runFio(ctx, filepath.Dir(inst.layer), job); err != nil {
			return 0, err
		}
		if holdErr != nil {
			return 0, holdErr
		}
		after, err := layerBytes(inst.layer, inst.g.PGID)
		if err != nil {
			return 0, err
		}
		if err := inst.stop(); err != nil {
			return 0, fmt.Errorf("stopping server: %w", err)
		}
		stopped, err := layerBytes(inst.layer, 0)
		if err != nil {
			return 0, err
		}
		b.log.Info("write layer", "server", spec.name, "connected", connected, "disconnected", after, "stopped", stopped)
		total := max(connected, after, stopped)
		if total == 0 {
			return 0, errors.New("found no write layer")
		}
		return float64(total) / (1 << 20), nil
	})
}

// mib formats a byte count in MiB.
func mib(n int64) string { return strconv.FormatInt(n>>20, 10) + " MiB" }
