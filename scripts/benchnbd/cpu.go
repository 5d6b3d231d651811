package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

const (
	// cpuSample is how often a cpuMeter reads the CPU times of the group's
	// processes. The connections' processes (nbd-server forks one per
	// connection) live for a whole fio run, so the period only limits how
	// well the window's ends are placed between samples, and how much CPU
	// time the meter takes from the server and fio.
	cpuSample = 20 * time.Millisecond
	// cpuScanEvery is how many samples apart the meter scans all of /proc
	// for the group's processes. In between it follows the children of the
	// processes it knows (through their main threads), which is cheaper
	// than a scan and catches nbd-server's per-connection children at once.
	cpuScanEvery = 25
	// cpuMargin is left out at both ends of the measured part of a fio run,
	// so that the window misses fio's start and stop: fio's report comes a
	// few ms after its last I/O, the connections' start times differ by a
	// few ms, and a job can overrun its runtime by its last I/Os (up to
	// about 100 ms seen with nbd-server and 32 clients).
	cpuMargin = 200 * time.Millisecond
	// minCPUWindow is the shortest window a CPU figure is taken over.
	minCPUWindow = 250 * time.Millisecond
)

// cpuPoint is one sample: the CPU time the group used from the meter's
// start until t.
type cpuPoint struct {
	t   time.Time
	cpu time.Duration
}

// cpuMeter records the CPU time (user and system) a process group uses
// while it runs, as a series of samples, so that the time over a window
// known only afterwards (the measured part of a fio run) can be read off.
// It sums utime+stime of every process of the group: threads are included
// in their process's figures, and a child's time is counted while it runs,
// not again in its parent's cutime when it is reaped. A process that exits
// loses at most its last cpuSample of CPU time.
type cpuMeter struct {
	pgid    int
	samples int
	known   []int         // live processes of the group at the last sample
	base    map[int]int64 // ticks of the processes alive at the start
	last    map[int]int64 // latest ticks of every process seen
	points  []cpuPoint
	sampler *benchkit.Sampler
}

// meter starts recording the group's CPU time.
func (g *group) meter() *cpuMeter {
	m := &cpuMeter{pgid: g.PGID, base: map[int]int64{}, last: map[int]int64{}}
	m.sample()
	m.sampler = benchkit.StartSampler(cpuSample, m.sample)
	return m
}

// sample reads the CPU time of every process of the group. Only the
// meter's goroutine calls it, and end once that goroutine is done.
func (m *cpuMeter) sample() {
	var pids []int
	if m.samples%cpuScanEvery == 0 {
		pids = benchkit.GroupPIDs(m.pgid)
	}
	now := time.Now() // after the scan, right before the reads
	pids = append(pids, m.known...)
	pgid := strconv.Itoa(m.pgid)
	seen := map[int]bool{}
	var live []int
	for i := 0; i < len(pids) && i < 4096; i++ {
		pid := pids[i]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		f, err := benchkit.StatFields(pid)
		if err != nil || f[2] != pgid {
			continue
		}
		utime, uerr := strconv.ParseInt(f[11], 10, 64)
		stime, serr := strconv.ParseInt(f[12], 10, 64)
		if uerr != nil || serr != nil {
			continue
		}
		ticks := utime + stime
		if m.samples == 0 {
			m.base[pid] = ticks // processes born later count from zero
		}
		m.last[pid] = ticks
		if f[0] == "Z" {
			continue
		}
		live = append(live, pid)
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
		for c := range strings.FieldsSeq(string(b)) {
			if n, err := strconv.Atoi(c); err == nil {
				pids = append(pids, n)
			}
		}
	}
	m.known = live
	var ticks int64
	for pid, t := range m.last {
		ticks += t - m.base[pid]
	}
	m.points = append(m.points, cpuPoint{t: now, cpu: benchkit.TicksDuration(ticks)})
	m.samples++
}

// end stops the meter and returns its samples.
func (m *cpuMeter) end() []cpuPoint {
	m.sampler.Stop()
	m.sample()
	return m.points
}

// cpuAt returns the group's CPU time at t, interpolated between the samples
// around it; false if t is outside the samples.
func cpuAt(points []cpuPoint, t time.Time) (time.Duration, bool) {
	for i := 1; i < len(points); i++ {
		a, b := points[i-1], points[i]
		if t.Before(a.t) {
			break
		}
		if t.After(b.t) {
			continue
		}
		span := b.t.Sub(a.t)
		if span <= 0 {
			return b.cpu, true
		}
		return a.cpu + time.Duration(float64(b.cpu-a.cpu)*float64(t.Sub(a.t))/float64(span)), true
	}
	return 0, false
}

// cpuRate returns the group's CPU time per second of wall-clock time
// between from and to.
func cpuRate(points []cpuPoint, from, to time.Time) (float64, error) {
	if d := to.Sub(from); d < minCPUWindow {
		return 0, fmt.Errorf("CPU window of %v is shorter than %v", d.Round(time.Millisecond), minCPUWindow)
	}
	a, aok := cpuAt(points, from)
	b, bok := cpuAt(points, to)
	if !aok || !bok {
		return 0, errors.New("CPU window is outside the samples")
	}
	return (b - a).Seconds() / to.Sub(from).Seconds(), nil
}

// cpuWindow returns the part of a time-based fio run over which the
// server's CPU time is taken: the measured part (the runtime after fio's
// ramp_time warm-up, up to the end of the run), less cpuMargin at both ends
// and, when the jobs started up to stagger apart, less the stagger at the
// end, so that every job is in its measured part throughout. A job measures
// at least runtime and ends by r.end, so it is past its warm-up by
// r.end-runtime; fio's reported runtime, the longest job's, can be longer.
func cpuWindow(r fioResult, runtime, stagger time.Duration) (from, to time.Time) {
	if r.runtime > 0 {
		runtime = min(runtime, r.runtime)
	}
	return r.end.Add(-runtime + cpuMargin), r.end.Add(-stagger - cpuMargin)
}
