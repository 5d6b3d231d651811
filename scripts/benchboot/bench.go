package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// row is one measurement of the table.
type row struct {
	key     string
	proto   string // dhcp, tftp or http
	label   string
	unit    string
	blksize int // TFTP block size asked for
	clients int // TFTP and HTTP clients, or DHCP handshakes in flight
}

// rows returns the selected measurements in table order.
func (c config) rows() []row {
	size := mib(c.size)
	all := map[string]row{
		"dhcp-1":          {proto: "dhcp", label: "DHCP handshakes (DORA), 1 outstanding", unit: "handshakes/s", clients: 1},
		"dhcp-many":       {proto: "dhcp", label: fmt.Sprintf("DHCP handshakes (DORA), %d outstanding", c.outstanding), unit: "handshakes/s", clients: c.outstanding},
		"tftp-1468-1":     {proto: "tftp", label: "TFTP " + size + ", blksize 1468, 1 client", unit: "MB/s", blksize: 1468, clients: 1},
		"tftp-1468-many":  {proto: "tftp", label: fmt.Sprintf("TFTP %s, blksize 1468, %d clients", size, c.clients), unit: "MB/s", blksize: 1468, clients: c.clients},
		"tftp-65464-1":    {proto: "tftp", label: "TFTP " + size + ", blksize 65464, 1 client", unit: "MB/s", blksize: 65464, clients: 1},
		"tftp-65464-many": {proto: "tftp", label: fmt.Sprintf("TFTP %s, blksize 65464, %d clients", size, c.clients), unit: "MB/s", blksize: 65464, clients: c.clients},
		"http-1":          {proto: "http", label: "HTTP " + size + ", 1 client", unit: "MB/s", clients: 1},
		"http-many":       {proto: "http", label: fmt.Sprintf("HTTP %s, %d clients", size, c.clients), unit: "MB/s", clients: c.clients},
	}
	var out []row
	for _, k := range c.selected {
		r := all[k]
		r.key = k
		out = append(out, r)
	}
	return out
}

// protos returns the protocols of the selected rows, in table order.
func (c config) protos() []string {
	var out []string
	for _, r := range c.rows() {
		if !slices.Contains(out, r.proto) {
			out = append(out, r.proto)
		}
	}
	return out
}

// results holds the figures by row key and server (one per round), and
// what went wrong.
type results struct {
	servers  []string
	vals     benchkit.Figures
	cpu      benchkit.Figures    // server CPU per unit of work, like vals
	problems map[string][]string // by server
	blksizes map[string]map[int]int
}

func newResults(servers []string) *results {
	return &results{servers: servers, vals: benchkit.Figures{}, cpu: benchkit.Figures{}, problems: map[string][]string{}, blksizes: map[string]map[int]int{}}
}

func (r *results) set(key, server string, v float64) { r.vals.Add(key, server, v) }

// setCPU records the server's CPU time per unit of work in a row.
func (r *results) setCPU(key, server string, v float64) { r.cpu.Add(key, server, v) }

// get returns the median of the figures of one row and server.
func (r *results) get(key, server string) (float64, bool) { return r.vals.Median(key, server) }

// getCPU returns the median CPU time per unit of work of one row and server.
func (r *results) getCPU(key, server string) (float64, bool) { return r.cpu.Median(key, server) }

func (r *results) problem(server, msg string) {
	if !slices.Contains(r.problems[server], msg) {
		r.problems[server] = append(r.problems[server], msg)
	}
}

// bench runs the whole benchmark.
type bench struct {
	cfg      config
	log      *slog.Logger
	dir      string // the run's temporary directory: the boot tree
	stateDir string // the run's directory for the servers' directories
	tb       *testbed
	res      *results
	tree     string // boot tree holding fileName
	image    string // small image for rackboot's configuration
	sum      string // SHA-256 of the file
	starts   int    // servers started, for unique directories
	// skip marks what can't be measured for the rest of the run, by
	// "server" or "server/proto".
	skip map[string]bool
}

func (b *bench) run(ctx context.Context) (*report, error) {
	rep := &report{cfg: b.cfg, rows: b.cfg.rows(), res: b.res, started: time.Now()}
	rep.machine = benchkit.MachineInfo()
	rep.tools = toolVersions(ctx, b.cfg.rackboot)
	b.skip = map[string]bool{}
	if err := b.makeTree(ctx); err != nil {
		return nil, err
	}
	rep.sum = b.sum
	// Every server sends the file from memory, whatever the kernel's
	// reclaim thinks of pages left idle between rows.
	if hold, err := benchkit.HoldInCache(filepath.Join(b.tree, fileName)); err != nil {
		b.log.Warn("file not held in the page cache", "err", err)
		rep.cacheErr = err
	} else {
		defer hold.Release()
	}
	for round := range b.cfg.count {
		for _, name := range b.cfg.servers {
			if b.skip[name] {
				continue
			}
			spec := specs()[name]
			bin, err := spec.lookPath(b.cfg)
			if err != nil {
				b.log.Warn("server not measured", "server", name, "err", err)
				b.res.problem(name, "not measured: "+err.Error())
				b.skip[name] = true
				continue
			}
			for _, proto := range b.cfg.protos() {
				if !spec.serves(proto) || b.skip[name+"/"+proto] {
					continue
				}
				b.log.Info("measuring", "server", name, "proto", proto, "round", round+1)
				var err error
				switch proto {
				case "dhcp":
					err = b.dhcp(ctx, spec, bin)
				case "tftp":
					err = b.transfers(ctx, spec, bin, proto, round == 0)
				case "http":
					err = b.transfers(ctx, spec, bin, proto, round == 0)
				}
				if err != nil {
					return nil, err
				}
			}
		}
	}
	rep.elapsed = time.Since(rep.started)
	return rep, nil
}

// makeTree writes the boot tree: the file of random data, and the small
// files rackboot's configuration names.
func (b *bench) makeTree(ctx context.Context) error {
	b.tree = filepath.Join(b.dir, "tree")
	if err := os.MkdirAll(filepath.Join(b.tree, "amd64"), 0o755); err != nil {
		return fmt.Errorf("creating the boot tree: %w", err)
	}
	for _, f := range []string{"amd64/vmlinuz", "amd64/initrd.img", bootFile} {
		if err := writeFile(filepath.Join(b.tree, f), "not a real "+f+"\n"); err != nil {
			return err
		}
	}
	b.image = filepath.Join(b.dir, "minimal.img")
	if err := os.WriteFile(b.image, make([]byte, 1<<20), 0o644); err != nil {
		return fmt.Errorf("creating the image: %w", err)
	}
	path := filepath.Join(b.tree, fileName)
	b.log.Info("creating the file", "file", path, "bytes", b.cfg.size)
	// Readable by everyone: the servers that drop privileges must read it.
	if err := benchkit.CreateRandomFile(ctx, path, b.cfg.size, 0o644, "file"); err != nil {
		return err
	}
	var err error
	b.sum, err = benchkit.SHA256File(path, "file")
	return err
}

// instance is one running server.
type instance struct {
	g       *group
	dir     string
	stopped bool
}

func (i *instance) stop() error {
	if i.stopped {
		return nil
	}
	i.stopped = true
	return i.g.Stop()
}

// start starts a fresh server for proto in a new directory.
func (b *bench) start(spec *serverSpec, bin, proto string) (*instance, error) {
	b.starts++
	dir := filepath.Join(b.stateDir, fmt.Sprintf("%02d-%s-%s", b.starts, spec.name, proto))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating server directory: %w", err)
	}
	si := startInfo{bin: bin, proto: proto, dir: dir, tree: b.tree, image: b.image}
	argv, env, err := spec.command(si)
	if err != nil {
		return nil, err
	}
	b.log.Info("starting server", "server", spec.name, "argv", argv, "env", env)
	g, err := startServer(b.tb.srv, argv, env, dir, filepath.Join(dir, "server.log"))
	if err != nil {
		return nil, err
	}
	return &instance{g: g, dir: dir}, nil
}

// stopInstance stops a server and records a failure to stop cleanly.
func (b *bench) stopInstance(spec *serverSpec, inst *instance) {
	if err := inst.stop(); err != nil {
		b.log.Warn("stopping server", "server", spec.name, "err", err)
		b.res.problem(spec.name, "stop: "+err.Error())
	}
}

// A TFTP or HTTP row repeats its batch of transfers until the batches
// have taken minRowTime, at most maxBatches times.
const (
	minRowTime = time.Second
	maxBatches = 50
)

// readyTimeout bounds the wait for a server to answer.
const readyTimeout = 20 * time.Second

// errNotServing says that rackboot ran but did not serve a protocol.
var errNotServing = errors.New("not serving")

// dhcp measures the DHCP rows on one server, each from a fresh start.
func (b *bench) dhcp(ctx context.Context, spec *serverSpec, bin string) error {
	load, err := openDHCPLoad(b.tb.cli, clientIf)
	if err != nil {
		return err
	}
	defer load.close()
	for _, rw := range b.cfg.rows() {
		if rw.proto != "dhcp" {
			continue
		}
		inst, err := b.start(spec, bin, "dhcp")
		if err != nil {
			b.res.problem(spec.name, "start: "+err.Error())
			return nil
		}
		err = b.dhcpReady(ctx, spec, inst, load)
		if err == nil {
			b.measureDHCP(ctx, spec, inst, rw, load)
		}
		b.stopInstance(spec, inst)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, errNotServing):
			b.log.Warn("rackboot serve does not answer DHCP; its DHCP rows show n/a", "err", err)
			b.res.problem(spec.name, "DHCP: `rackboot serve` does not run a DHCP server yet (no \"serving DHCP\" in its log, no OFFER): n/a")
			b.skip[spec.name+"/dhcp"] = true
			return nil
		case err != nil:
			b.log.Error("server not ready", "server", spec.name, "err", err)
			b.res.problem(spec.name, "DHCP start: "+err.Error())
			return nil
		}
	}
	return nil
}

// dhcpReady waits until the server offers an address. For rackboot, it
// first waits for its HTTP server (the appliance is up), then gives DHCP a
// few seconds, and returns errNotServing if serve never started it.
func (b *bench) dhcpReady(ctx context.Context, spec *serverSpec, inst *instance, load *dhcpLoad) error {
	timeout := readyTimeout
	if spec.name == "rackboot" {
		if err := poll(ctx, inst.g, readyTimeout, "HTTP answer", func() error { return httpReady(ctx, b.tb.cli) }); err != nil {
			return err
		}
		timeout = 5 * time.Second
	}
	err := poll(ctx, inst.g, timeout, "DHCP offer", func() error { return load.probe(ctx) })
	if err != nil && spec.name == "rackboot" && inst.g.Alive() && !strings.Contains(inst.g.Log(), "serving DHCP") {
		return fmt.Errorf("%w: %w", errNotServing, err)
	}
	return err
}

func (b *bench) measureDHCP(ctx context.Context, spec *serverSpec, inst *instance, rw row, load *dhcpLoad) {
	b.log.Info("measuring", "server", spec.name, "row", rw.key, "handshakes", b.cfg.handshakes)
	meter := inst.g.meter()
	r := load.run(ctx, b.cfg.handshakes, rw.clients)
	cpu := meter.end()
	if ctx.Err() != nil {
		return
	}
	if r.retransmits > 0 {
		b.res.problem(spec.name, fmt.Sprintf("%s: %d retransmissions (a client waits %v for each answer)", rw.key, r.retransmits, dhcpTimeout))
	}
	if r.failed > 0 {
		b.res.problem(spec.name, fmt.Sprintf("%s: %d of %d handshakes failed, e.g. %v", rw.key, r.failed, b.cfg.handshakes, r.firstErr))
	}
	if r.done == 0 {
		b.log.Error("measurement failed", "server", spec.name, "row", rw.key, "err", r.firstErr)
		return
	}
	b.res.set(rw.key, spec.name, r.rate())
	b.res.setCPU(rw.key, spec.name, float64(cpu.Microseconds())/float64(r.done))
	b.log.Info("measured", "server", spec.name, "row", rw.key, "value", r.rate(), "failed", r.failed, "cpu", cpu,
		"retransmits", r.retransmits, "dur", r.elapsed.Round(time.Millisecond))
}

// transfers measures the TFTP or HTTP rows on one fresh server. On the
// first round it also checks the content and the negotiated block sizes.
func (b *bench) transfers(ctx context.Context, spec *serverSpec, bin, proto string, first bool) error {
	inst, err := b.start(spec, bin, proto)
	if err != nil {
		b.res.problem(spec.name, "start: "+err.Error())
		return nil
	}
	defer b.stopInstance(spec, inst)
	ready := func() error { return httpReady(ctx, b.tb.cli) }
	if proto == "tftp" {
		ready = func() error { _, err := tftpProbe(ctx, b.tb.cli, 1468); return err }
	}
	if err := poll(ctx, inst.g, readyTimeout, strings.ToUpper(proto)+" answer", ready); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.log.Error("server not ready", "server", spec.name, "err", err)
		b.res.problem(spec.name, proto+" start: "+err.Error())
		return nil
	}
	if first {
		if err := b.check(ctx, spec, proto); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.log.Error("content check failed", "server", spec.name, "err", err)
			b.res.problem(spec.name, proto+" content check: "+err.Error())
			b.skip[spec.name+"/"+proto] = true
			return nil
		}
	}
	for _, rw := range b.cfg.rows() {
		if rw.proto != proto {
			continue
		}
		if !inst.g.Alive() {
			b.res.problem(spec.name, rw.key+": server is gone"+inst.g.LogTail())
			return nil
		}
		// A short batch is repeated, so that timer and scheduling noise
		// weigh less: the figure is all bytes over all batches' time.
		var elapsed time.Duration
		var err error
		batches := 0
		meter := inst.g.meter()
		for err == nil && batches < maxBatches && (batches == 0 || elapsed < minRowTime) {
			var d time.Duration
			if proto == "tftp" {
				d, err = tftpBatch(ctx, b.tb.cli, rw.clients, rw.blksize, b.cfg.size)
			} else {
				d, err = httpBatch(ctx, b.tb.cli, rw.clients, b.cfg.size)
			}
			elapsed += d
			batches++
			b.log.Debug("batch", "server", spec.name, "row", rw.key, "dur", d)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			b.log.Error("measurement failed", "server", spec.name, "row", rw.key, "err", err)
			b.res.problem(spec.name, rw.key+": "+err.Error())
			continue
		}
		cpu := meter.end()
		bytes := float64(batches*rw.clients) * float64(b.cfg.size)
		v := bytes / elapsed.Seconds() / 1e6
		b.res.set(rw.key, spec.name, v)
		b.res.setCPU(rw.key, spec.name, cpu.Seconds()/(bytes/1e9))
		b.log.Info("measured", "server", spec.name, "row", rw.key, "value", v, "batches", batches, "cpu", cpu, "dur", elapsed.Round(time.Millisecond))
	}
	return nil
}

// check compares the server's copy of the file with the original and, for
// TFTP, records the block sizes it agrees to.
func (b *bench) check(ctx context.Context, spec *serverSpec, proto string) error {
	var sum string
	var err error
	if proto == "tftp" {
		for _, bs := range []int{1468, 65464} {
			n, err := tftpProbe(ctx, b.tb.cli, bs)
			if err != nil {
				return fmt.Errorf("asking for blksize %d: %w", bs, err)
			}
			if b.res.blksizes[spec.name] == nil {
				b.res.blksizes[spec.name] = map[int]int{}
			}
			b.res.blksizes[spec.name][bs] = n
		}
		sum, err = tftpSum(ctx, b.tb.cli, 65464)
	} else {
		sum, err = httpSum(ctx, b.tb.cli, b.cfg.size)
	}
	if err != nil {
		return err
	}
	if sum != b.sum {
		return fmt.Errorf("content differs: sha256 %s, want %s", sum, b.sum)
	}
	return nil
}

// mib formats a byte count in MiB.
func mib(n int64) string { return strconv.FormatInt(n>>20, 10) + " MiB" }
