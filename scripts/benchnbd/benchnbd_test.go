package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseBytes(t *testing.T) {
	t.Parallel()
	tests := map[string]int64{"4096": 4096, "256M": 256 << 20, "1G": 1 << 30, "1GiB": 1 << 30, "64m": 64 << 20, "8KB": 8 << 10}
	for in, want := range tests {
		got, err := parseBytes(in)
		if err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1", "1.5G", "x"} {
		if got, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) = %d; want an error", in, got)
		}
	}
}

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
{"fio version": "fio-3.33", "jobs": [
 {"jobname": "rr32", "error": 0,
  "read": {"iops": 1000.5, "bw_bytes": 4098048, "io_bytes": 40960000},
  "write": {"iops": 0, "bw_bytes": 0, "io_bytes": 0}}]}`)
	r, err := parseFio(out)
	if err != nil {
		t.Fatalf("parseFio: %v", err)
	}
	if r.iops != 1000.5 || r.bw != 4098048 {
		t.Errorf("parseFio = %+v; want iops 1000.5, bw 4098048", r)
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
	g := &group{pgid: syscall.Getpgrp(), logPath: filepath.Join(t.TempDir(), "log")}
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
	var text, md bytes.Buffer
	r.writeText(&text)
	r.writeMarkdown(&md)
	if !strings.Contains(text.String(), "rackboot seq read = 50% of it (target >= 50%: met)") {
		t.Errorf("text report lacks the loopback line:\n%s", text.String())
	}
	if !strings.Contains(md.String(), "| measurement | unit | rackboot |") {
		t.Errorf("Markdown report lacks the table header:\n%s", md.String())
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
