package main

import (
	"bytes"
	"encoding/binary"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/netns"
	"github.com/rackboot/rackboot/scripts/internal/benchkit"
)

func TestParseConfigQuick(t *testing.T) {
	t.Parallel()
	c, err := parseConfig([]string{"-quick", "-servers", "nbdkit,rackboot,nbdkit"}, new(bytes.Buffer))
	if err != nil {
		t.Fatalf("parseConfig: %v", err)
	}
	if c.size != 256<<20 || c.runtime != 3*time.Second || strings.Join(c.servers, ",") != "nbdkit,rackboot" {
		t.Errorf("parseConfig(-quick) = size %d, runtime %v, servers %q; want 256 MiB, 3s, nbdkit,rackboot", c.size, c.runtime, c.servers)
	}
	c, err = parseConfig([]string{"-quick", "-size", "1G"}, new(bytes.Buffer))
	if err != nil || c.size != 1<<30 {
		t.Errorf("parseConfig(-quick -size 1G) = size %d, %v; want 1 GiB", c.size, err)
	}
	if _, err := parseConfig([]string{"-servers", "nbd-client"}, new(bytes.Buffer)); err == nil {
		t.Error("parseConfig(-servers nbd-client) succeeded; want an error")
	}
}

func TestParseFio(t *testing.T) {
	t.Parallel()
	out := []byte(`fio: connected to NBD server
{"fio version": "fio-3.33", "timestamp_ms": 1700000000123, "jobs": [
 {"jobname": "rr32", "error": 0,
  "read": {"iops": 1000.5, "bw_bytes": 4098048, "io_bytes": 40960000, "runtime": 10001},
  "write": {"iops": 0, "bw_bytes": 0, "io_bytes": 0, "runtime": 0}}]}`)
	r, err := parseFio(out)
	if err != nil {
		t.Fatalf("parseFio: %v", err)
	}
	if r.iops != 1000.5 || r.bw != 4098048 || r.runtime != 10001*time.Millisecond || !r.end.Equal(time.UnixMilli(1700000000123)) {
		t.Errorf("parseFio = %+v; want iops 1000.5, bw 4098048, runtime 10.001s, end at 1700000000.123", r)
	}
	if _, err := parseFio([]byte(`{"jobs": [{"jobname": "x", "error": 5}]}`)); err == nil {
		t.Error("parseFio(job error 5) succeeded; want an error")
	}
	if _, err := parseFio([]byte(`{"jobs": [{"jobname": "x", "read": {"io_bytes": 0}}]}`)); err == nil {
		t.Error("parseFio(no I/O) succeeded; want an error")
	}
}

// greeter accepts connections and sends each a newstyle greeting.
func greeter(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g := binary.BigEndian.AppendUint16([]byte(greetingMagic+greetingOptsMagic), flagFixedNewstyle|flagNoZeroes)
			c.Write(g)
			go func() {
				defer c.Close()
				var b [20]byte
				c.SetDeadline(time.Now().Add(time.Second))
				c.Read(b[:])
			}()
		}
	}()
	return ln.Addr().String()
}

func TestConnectStorm(t *testing.T) {
	t.Parallel()
	n, err := connectStorm(t.Context(), greeter(t), 64, 5*time.Second)
	if n != 64 || err != nil {
		t.Errorf("connectStorm(greeter) = %d, %v; want 64, nil", n, err)
	}

	// A listener that never accepts: the kernel completes the handshakes
	// (up to its backlog) but no greeting ever comes.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	n, err = connectStorm(t.Context(), mute.Addr().String(), 8, 200*time.Millisecond)
	if n != 0 || err == nil {
		t.Errorf("connectStorm(mute) = %d, %v; want 0 and an error", n, err)
	}
}

func TestWaitGreeting(t *testing.T) {
	t.Parallel()
	g := &group{benchkit.Group{PGID: syscall.Getpgrp(), LogPath: filepath.Join(t.TempDir(), "log")}}
	if err := waitGreeting(t.Context(), greeter(t), g, 5*time.Second); err != nil {
		t.Errorf("waitGreeting(greeter) = %v; want nil", err)
	}
}

func TestLoopbackBandwidth(t *testing.T) {
	t.Parallel()
	bw, err := loopbackBandwidth(t.Context(), 100*time.Millisecond)
	if err != nil || bw <= 0 {
		t.Errorf("loopbackBandwidth = %v, %v; want > 0", bw, err)
	}
}

func TestLayerBytes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "linked"), make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	// A temporary file unlinked while still open, as qemu-nbd and nbdkit
	// keep their overlays.
	p := filepath.Join(dir, "unlinked")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 128<<10)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	withOpen, err := layerBytes(dir, syscall.Getpgrp())
	if err != nil {
		t.Fatal(err)
	}
	onlyLinked, err := layerBytes(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Allocation can round up, but must cover what was written.
	if onlyLinked < 64<<10 || withOpen-onlyLinked < 128<<10 {
		t.Errorf("layerBytes = %d with open files, %d without; want >= 64 KiB and 128 KiB more with open files", withOpen, onlyLinked)
	}
}

func TestReport(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(nil, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	res := newResults([]string{"rackboot", "nbd-server", "qemu-nbd", "nbdkit"})
	res.set("rr1", "rackboot", 30000)
	res.set("rr1", "nbd-server", 20000)
	res.set("rr1", "nbdkit", 40000)
	res.set("cost", "rackboot", 64)
	res.set("cost", "qemu-nbd", 640)
	res.set("cost", "nbd-server", 80)
	res.set("seq", "rackboot", 1024)
	for _, v := range []float64{12.25, 30, 8} {
		res.setCPU("rr1", "rackboot", v)
	}
	res.setCPU("rr1", "nbdkit", 250)
	res.setCPU("seq", "nbd-server", 0.456)
	r := &report{cfg: cfg, rows: cfg.rows(), res: res, loopback: 2048 << 20, sumBefore: "ab", sumAfter: "ab"}
	byKey := map[string][]string{}
	for i, line := range r.table()[1:] {
		byKey[r.rows[i].key] = line
	}
	tests := map[string][]string{
		"rr1":  {"30000", "20000", "n/a", "40000", "40000", "0.75x", "MISSED"},
		"cost": {"64.0 (1.00x)", "80.0 (1.25x)", "640.0 (10.00x)", "n/a", "80.0 (1.25x)", "1.25x", "met"},
		"seq":  {"1024", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"},
	}
	for key, want := range tests {
		if got := byKey[key][2:]; strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("table row %s = %q; want %q", key, got, want)
		}
	}
	cpu := r.cpuTable()
	if got, want := strings.Join(cpu[0], "|"), "server CPU time|unit|rackboot|nbd-server|qemu-nbd|nbdkit"; got != want {
		t.Errorf("cpuTable header = %q; want %q", got, want)
	}
	var cpuKeys []string
	cpuByKey := map[string][]string{}
	for _, line := range cpu[1:] {
		for _, rw := range r.rows {
			if rw.label == line[0] {
				cpuKeys = append(cpuKeys, rw.key)
				cpuByKey[rw.key] = line[1:]
			}
		}
	}
	if got, want := strings.Join(cpuKeys, ","), "seq,rr1,rr32,rw1,rw32,clients"; got != want || len(cpu) != 7 {
		t.Errorf("cpuTable rows = %s (%d lines); want %s", got, len(cpu)-1, want)
	}
	cpuTests := map[string][]string{
		"rr1":  {"µs/IO", "12.2", "n/a", "n/a", "250"}, // the median of 12.25, 30 and 8
		"seq":  {"s/GB", "n/a", "0.46", "n/a", "n/a"},
		"rw32": {"µs/IO", "n/a", "n/a", "n/a", "n/a"},
	}
	for key, want := range cpuTests {
		if got := cpuByKey[key]; strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("cpuTable row %s = %q; want %q", key, got, want)
		}
	}
	var text, md bytes.Buffer
	r.writeText(&text)
	r.writeMarkdown(&md)
	if !strings.Contains(text.String(), "rackboot seq read = 50% of it (target >= 50%: met)") {
		t.Errorf("text report lacks the loopback line:\n%s", text.String())
	}
	if !strings.Contains(md.String(), "| measurement | unit | rackboot |") {
		t.Errorf("Markdown report lacks the table header:\n%s", md.String())
	}
	for name, out := range map[string]string{"text": text.String(), "Markdown": md.String()} {
		main, second := strings.Index(out, "measurement"), strings.Index(out, "server CPU time")
		if main < 0 || second < main || !strings.Contains(out, "- server CPU time: user and system time") {
			t.Errorf("%s report lacks the CPU table after the main one, or its note:\n%s", name, out)
		}
	}
	if !strings.Contains(md.String(), "| rand read 4 KiB QD1 | µs/IO | 12.2 | n/a | n/a | 250 |") {
		t.Errorf("Markdown report lacks the CPU table's rr1 row:\n%s", md.String())
	}
}

func TestResultsMedian(t *testing.T) {
	t.Parallel()
	r := newResults([]string{"nbdkit"})
	if _, ok := r.get("seq", "nbdkit"); ok {
		t.Error("get(seq) with no figures reported ok")
	}
	for i, tc := range []struct {
		add  float64
		want float64
	}{{30, 30}, {10, 20}, {20, 20}, {100, 25}} {
		r.set("seq", "nbdkit", tc.add)
		if got, _ := r.get("seq", "nbdkit"); got != tc.want {
			t.Errorf("after %d figures get(seq) = %v; want %v", i+1, got, tc.want)
		}
	}
}

func TestResultsCPUMedian(t *testing.T) {
	t.Parallel()
	r := newResults([]string{"nbdkit"})
	if _, ok := r.getCPU("rr1", "nbdkit"); ok {
		t.Error("getCPU(rr1) with no figures reported ok")
	}
	r.setCPU("rr1", "nbdkit", 10)
	r.setCPU("rr1", "nbdkit", 20)
	r.set("rr1", "nbdkit", 5000)
	if got, ok := r.getCPU("rr1", "nbdkit"); !ok || got != 15 {
		t.Errorf("getCPU(rr1) = %v, %v; want 15", got, ok)
	}
	if got, _ := r.get("rr1", "nbdkit"); got != 5000 {
		t.Errorf("get(rr1) = %v; want 5000 (CPU figures kept apart)", got)
	}
}

func TestCPUWindow(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1700000000, 0)
	// One CPU second per wall-clock second for 2 s, then half a second per
	// second for 2 s.
	var points []cpuPoint
	for ms := 0; ms <= 4000; ms += 20 {
		cpu := time.Duration(ms) * time.Millisecond
		if ms > 2000 {
			cpu = 2*time.Second + time.Duration(ms-2000)*time.Millisecond/2
		}
		points = append(points, cpuPoint{t: t0.Add(time.Duration(ms) * time.Millisecond), cpu: cpu})
	}
	if got, ok := cpuAt(points, t0.Add(1010*time.Millisecond)); !ok || got != 1010*time.Millisecond {
		t.Errorf("cpuAt(1.010s) = %v, %v; want 1.01s", got, ok)
	}
	if _, ok := cpuAt(points, t0.Add(-time.Millisecond)); ok {
		t.Error("cpuAt(before the samples) reported ok")
	}
	if _, ok := cpuAt(points, t0.Add(4001*time.Millisecond)); ok {
		t.Error("cpuAt(after the samples) reported ok")
	}

	// A run of 2 s measured after 1 s of warm-up, ending at 3.7 s, without
	// and with a stagger of 0.5 s. fio reports the longest job's runtime,
	// which may exceed -runtime; the window starts -runtime before the end.
	r := fioResult{runtime: 2100 * time.Millisecond, end: t0.Add(3700 * time.Millisecond)}
	from, to := cpuWindow(r, 2*time.Second, 0)
	if want := t0.Add(1900 * time.Millisecond); !from.Equal(want) {
		t.Errorf("cpuWindow from = %v; want %v", from.Sub(t0), want.Sub(t0))
	}
	if want := t0.Add(3500 * time.Millisecond); !to.Equal(want) {
		t.Errorf("cpuWindow to = %v; want %v", to.Sub(t0), want.Sub(t0))
	}
	// 0.1 s at 1 and 1.5 s at 0.5: 0.85 CPU s over 1.6 s.
	if got, err := cpuRate(points, from, to); err != nil || math.Abs(got-0.85/1.6) > 1e-9 {
		t.Errorf("cpuRate(window) = %v, %v; want %v", got, err, 0.85/1.6)
	}
	from, to = cpuWindow(r, 2*time.Second, 500*time.Millisecond)
	if !from.Equal(t0.Add(1900*time.Millisecond)) || !to.Equal(t0.Add(3000*time.Millisecond)) {
		t.Errorf("cpuWindow(stagger 0.5s) = %v to %v; want 1.9s to 3s", from.Sub(t0), to.Sub(t0))
	}
	// A reported runtime shorter than asked for (rounding) moves the start later.
	r.runtime = 1999 * time.Millisecond
	if from, _ = cpuWindow(r, 2*time.Second, 0); !from.Equal(t0.Add(1901 * time.Millisecond)) {
		t.Errorf("cpuWindow(runtime 1.999s) from = %v; want 1.901s", from.Sub(t0))
	}
	if _, err := cpuRate(points, t0.Add(3*time.Second), t0.Add(3200*time.Millisecond)); err == nil {
		t.Error("cpuRate(0.2 s window) succeeded; want an error")
	}
	if _, err := cpuRate(points, t0.Add(3*time.Second), t0.Add(5*time.Second)); err == nil {
		t.Error("cpuRate(window past the samples) succeeded; want an error")
	}
}

// TestCPUMeter measures a process group whose busy child exits before the
// meter stops, and whose busy leader outlives it. The figure should match
// the leader's rusage, which includes the child it reaped: the child's time
// counts once, while it runs, and not again in the leader's cutime.
func TestCPUMeter(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	busy := `i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done` // no forks: [ is built in
	cmd := exec.Command(sh, "-c", "sh -c '"+busy+"'; "+busy+"; sleep 0.3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := (&group{benchkit.Group{PGID: cmd.Process.Pid}}).meter()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	points := m.end()
	got := points[len(points)-1].cpu
	want := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	// The child loses at most its last sample; ticks are 10 ms.
	if d := got - want; d < -(cpuSample+30*time.Millisecond) || d > 30*time.Millisecond || want < 100*time.Millisecond {
		t.Errorf("cpuMeter = %v; want about %v (rusage of the group)", got, want)
	}
	for i := 1; i < len(points); i++ {
		if points[i].cpu < points[i-1].cpu || points[i].t.Before(points[i-1].t) {
			t.Fatalf("cpuMeter samples go backwards at %d: %v then %v", i, points[i-1], points[i])
		}
	}
}

func TestRotate(t *testing.T) {
	s := []string{"a", "b", "c"}
	for n, want := range []string{"a b c", "b c a", "c a b", "a b c", "b c a"} {
		if got := strings.Join(rotate(s, n), " "); got != want {
			t.Errorf("rotate(%v, %d) = %s, want %s", s, n, got, want)
		}
	}
	if got := rotate(nil, 2); len(got) != 0 {
		t.Errorf("rotate(nil, 2) = %v", got)
	}
	if s[0] != "a" {
		t.Errorf("rotate changed its argument: %v", s)
	}
}

func TestParseConfigPin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ arg, srv, cli string }{
		{"0/1", "0", "1"},
		{"0/0", "0", "0"},
		{"0-1,3/2", "0-1,3", "2"},
	} {
		c, err := parseConfig([]string{"-pin", tc.arg}, new(bytes.Buffer))
		if err != nil || c.serverCPUs != tc.srv || c.clientCPUs != tc.cli {
			t.Errorf("parseConfig(-pin %s) = %q/%q, %v; want %q/%q", tc.arg, c.serverCPUs, c.clientCPUs, err, tc.srv, tc.cli)
		}
	}
	for _, bad := range []string{"0", "0/", "/1", "a/1", "0/1-0", "0/-1", "0,/1"} {
		if _, err := parseConfig([]string{"-pin", bad}, new(bytes.Buffer)); err == nil {
			t.Errorf("parseConfig(-pin %q) succeeded; want an error", bad)
		}
	}
	if got := strings.Join(pinned("0", []string{"fio", "x"}), " "); got != "taskset -c 0 fio x" {
		t.Errorf("pinned = %q", got)
	}
	if got := strings.Join(pinned("", []string{"fio", "x"}), " "); got != "fio x" {
		t.Errorf("pinned without CPUs = %q", got)
	}
}

func TestNetworkInfo(t *testing.T) {
	t.Parallel()
	n := netns.New(t)
	h := n.AddHost(netns.MAC(1), netip.Prefix{})
	// reno is built into every kernel; the host's own setting is left alone.
	h.Run(t, "sysctl", "-qw", "net.ipv4.tcp_congestion_control=reno")
	var got string
	if err := h.Do(func() error { got = networkInfo(); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := "127.0.0.1 in a network namespace with interfaces lo, eth0; TCP congestion control reno"; got != want {
		t.Errorf("networkInfo with eth0 = %q; want %q", got, want)
	}
	h.Run(t, "ip", "link", "del", "eth0")
	if err := h.Do(func() error { got = networkInfo(); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := "127.0.0.1 in a network namespace with no other interface; TCP congestion control reno"; got != want {
		t.Errorf("networkInfo with lo alone = %q; want %q", got, want)
	}
}
