package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

// report is everything the run prints.
type report struct {
	cfg          config
	rows         []row
	res          *results
	machine      []string
	tools        []string
	sumBefore    string
	sumAfter     string
	imageChanged bool
	// cached is the share of the base image in the page cache at the end
	// of the run, held there by the bench; cacheErr says why it wasn't.
	cached    float64
	cacheErr  error
	loopback  float64 // bytes per second, 0 if not measured
	network   string  // where the servers listen and the TCP congestion control (networkInfo)
	loadStart string  // /proc/loadavg's 1-minute figure at the start
	loadEnd   string  // and at the end
	started   time.Time
	elapsed   time.Duration
}

// toolVersions returns the versions of the client and the servers.
func toolVersions(ctx context.Context, rackboot string) []string {
	version := func(pattern string, argv ...string) string {
		if _, err := exec.LookPath(argv[0]); err != nil {
			return argv[0] + " not installed"
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if m := regexp.MustCompile(pattern).FindStringSubmatch(string(out)); m != nil {
			return strings.Join(m[1:], " ")
		}
		return argv[0] + " (unknown version)"
	}
	v := []string{
		version(`(fio-\S+)`, "fio", "--version"),
		version(`(?m)^(libnbd \S+)`, "nbdinfo", "--version"),
		version(`(nbd-server) version (\S+)`, "nbd-server", "-V"),
		version(`(qemu-nbd \S+)`, "qemu-nbd", "--version"),
		version(`(nbdkit \S+)`, "nbdkit", "--version"),
	}
	if rackboot != "" {
		v = append(v, version(`(rackboot \S+)`, rackboot, "version"))
	}
	return v
}

// best returns the best reference figure of a row.
func (r *report) best(rw row) (float64, bool) {
	var best float64
	found := false
	for _, s := range r.res.servers {
		if s == "rackboot" {
			continue
		}
		v, ok := r.res.get(rw.key, s)
		if !ok {
			continue
		}
		if !found || (rw.lower && v < best) || (!rw.lower && v > best) {
			best, found = v, true
		}
	}
	return best, found
}

// ratio returns rackboot's ratio to the best reference, oriented so that
// >= 1 means rackboot is at least as good.
func (r *report) ratio(rw row) (float64, bool) {
	best, ok := r.best(rw)
	v, rok := r.res.get(rw.key, "rackboot")
	if !ok || !rok || best <= 0 || v <= 0 {
		return 0, false
	}
	if rw.lower {
		return best / v, true
	}
	return v / best, true
}

func (r *report) format(rw row, v float64) string {
	switch rw.key {
	case "connects":
		return fmt.Sprintf("%.0f/%d", v, r.cfg.connects)
	case "cost":
		return fmt.Sprintf("%.1f (%.2fx)", v, v*(1<<20)/float64(r.cfg.costBytes))
	}
	return fmt.Sprintf("%.0f", v)
}

// table returns the header and the cells of the results table.
func (r *report) table() [][]string {
	head := append([]string{"measurement", "unit"}, r.res.servers...)
	head = append(head, "best ref", "rackboot/best", "target")
	t := [][]string{head}
	for _, rw := range r.rows {
		line := []string{rw.label, rw.unit}
		for _, s := range r.res.servers {
			if v, ok := r.res.get(rw.key, s); ok {
				line = append(line, r.format(rw, v))
			} else {
				line = append(line, "n/a")
			}
		}
		if v, ok := r.best(rw); ok {
			line = append(line, r.format(rw, v))
		} else {
			line = append(line, "n/a")
		}
		line = append(line, benchkit.RatioCells(r.ratio(rw))...)
		t = append(t, line)
	}
	return t
}

// cpuTable returns the header and cells of the table of the servers' CPU
// time per unit of work, for the rows that have one.
func (r *report) cpuTable() [][]string {
	head := append([]string{"server CPU time", "unit"}, r.res.servers...)
	t := [][]string{head}
	for _, rw := range r.rows {
		if rw.cpuUnit == "" {
			continue
		}
		line := []string{rw.label, rw.cpuUnit}
		for _, s := range r.res.servers {
			v, ok := r.res.getCPU(rw.key, s)
			switch {
			case !ok:
				line = append(line, "n/a")
			case rw.cpuUnit == cpuPerIO && v >= 100:
				line = append(line, fmt.Sprintf("%.0f", v))
			case rw.cpuUnit == cpuPerIO:
				line = append(line, fmt.Sprintf("%.1f", v))
			default:
				line = append(line, fmt.Sprintf("%.2f", v))
			}
		}
		t = append(t, line)
	}
	return t
}

// notes returns the lines printed under the tables.
func (r *report) notes() []string {
	n := []string{
		"rackboot/best: rackboot divided by the best reference; for the write-layer row (lower is better) the best " +
			"reference divided by rackboot, so >= 1.00x always means rackboot is at least as good. Target: >= 1.00x " +
			"(as shown, to two decimals) on every row. The write-layer row's (N.NNx) is the layer's size over the bytes written.",
		fmt.Sprintf("server CPU time: user and system time of all the server's processes (its process group; utime+stime "+
			"from /proc/PID/stat every %v, at 10 ms resolution; threads included) per I/O for the IOPS rows and per GB "+
			"(10^9 bytes) read or written for the MiB/s rows (the median over the rounds; lower is better). fio's %v warm-up "+
			"is left out: the server's CPU time per second over the measured part of each fio run (the last %v, up to fio's "+
			"report), less %v at either end and, for the %d-clients row, less the %v start stagger at the end (so that every "+
			"client is past its warm-up throughout), is divided by fio's IOPS or bandwidth, which count the measured part only; "+
			"fio's own CPU time is not counted, and it shares the machine's %d cores with the server",
			cpuSample, r.cfg.ramp, r.cfg.runtime, cpuMargin, r.cfg.clients, clientStagger, runtime.NumCPU()),
	}
	if r.loopback > 0 {
		line := fmt.Sprintf("loopback TCP, one stream in-process: %.0f MiB/s", r.loopback/(1<<20))
		if v, ok := r.res.get("seq", "rackboot"); ok {
			pct := 100 * v * (1 << 20) / r.loopback
			verdict := "met"
			if pct < 50 {
				verdict = "MISSED"
			}
			line += fmt.Sprintf("; rackboot seq read = %.0f%% of it (target >= 50%%: %s)", pct, verdict)
		} else {
			line += "; rackboot seq read not measured"
		}
		n = append(n, line)
	} else {
		n = append(n, "loopback TCP: not measured")
	}
	status := "unchanged"
	if r.imageChanged {
		status = "CHANGED: " + r.sumAfter
	}
	n = append(n, fmt.Sprintf("base image: %s of random data, sha256 %s, %s at the end of the run", mib(r.cfg.size), r.sumBefore, status))
	if r.cacheErr != nil {
		n = append(n, "base image NOT held in the page cache, so rows may have read part of it from disk: "+r.cacheErr.Error())
	} else {
		n = append(n, fmt.Sprintf("base image held in the page cache (mapped and locked) for the whole run, so that every server reads it from memory; %.0f%% resident at the end", 100*r.cached))
	}
	if r.cfg.count > 1 {
		n = append(n, fmt.Sprintf("each figure is the median of %d rounds; in a round the servers run side by side and each row is measured on one server at a time, on all of them before the next row starts, in an order rotated each round (a change in load falls on every server alike)", r.cfg.count))
	} else {
		n = append(n, "one round: the servers ran side by side, each row measured on one server at a time, on all of them before the next row; on a shared machine, use -count 3 or more for figures to publish")
	}
	if r.cfg.serverCPUs != "" {
		n = append(n, fmt.Sprintf("placement: servers pinned to CPUs %s and fio to CPUs %s (taskset -c); the connect storm and the loopback measurement run unpinned", r.cfg.serverCPUs, r.cfg.clientCPUs))
	}
	n = append(n, fmt.Sprintf("client: fio --ioengine=nbd (libnbd); time-based rows run %v after %v of warm-up; "+
		"%d clients = fio numjobs=%d threads, one NBD connection each, started over %v (random startdelay), aggregate bandwidth; "+
		"a run that times out (typically a connection never greeted) is tried up to %d times; write layer = allocated blocks (st_blocks*512)",
		r.cfg.runtime, r.cfg.ramp, r.cfg.clients, r.cfg.clients, clientStagger, fioAttempts))
	sp := specs()
	for _, s := range r.res.servers {
		n = append(n, sp[s].note)
	}
	for _, s := range r.res.servers {
		for _, p := range r.res.problems[s] {
			n = append(n, s+" problem: "+p)
		}
	}
	n = append(n, fmt.Sprintf("run took %v", r.elapsed.Round(time.Second)))
	return n
}

func (r *report) header() []string {
	return []string{
		"rackboot NBD benchmark, " + r.started.Format("2006-01-02 15:04 MST"),
		"machine: " + strings.Join(r.machine, "; ") + "; load average " + r.loadStart + " at start, " + r.loadEnd + " at end",
		"network: " + r.network,
		"tools: " + strings.Join(r.tools, ", "),
	}
}

// writeText writes the report as aligned plain-text tables.
func (r *report) writeText(w io.Writer) { r.doc().WriteText(w) }

// writeMarkdown writes the report as Markdown, for the README.
func (r *report) writeMarkdown(w io.Writer) { r.doc().WriteMarkdown(w) }

func (r *report) doc() benchkit.Report {
	return benchkit.Report{Header: r.header(), Tables: [][][]string{r.table(), r.cpuTable()}, Notes: r.notes()}
}
