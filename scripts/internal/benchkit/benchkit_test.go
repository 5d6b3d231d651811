package benchkit

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for name, tc := range map[string]struct {
		in   []time.Duration
		want time.Duration
		ok   bool
	}{
		"empty": {nil, 0, false},
		"odd":   {[]time.Duration{3, 1, 2}, 2, true},
		"even":  {[]time.Duration{4, 1, 3, 2}, 2, true},
	} {
		t.Run(name, func(t *testing.T) {
			got, ok := Median(tc.in)
			if got != tc.want || ok != tc.ok {
				t.Errorf("Median(%v) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
			}
		})
	}
	if got, ok := Median([]float64{4, 1, 3, 2}); !ok || got != 2.5 {
		t.Errorf("Median(4, 1, 3, 2) = %v, %v; want 2.5", got, ok)
	}
}

func TestFigures(t *testing.T) {
	t.Parallel()
	f := Figures{}
	if _, ok := f.Median("seq", "nbdkit"); ok {
		t.Error("Median(seq) with no figures reported ok")
	}
	for _, v := range []float64{30, 10, 20, 100} {
		f.Add("seq", "nbdkit", v)
	}
	f.Add("seq", "rackboot", 7)
	if got, ok := f.Median("seq", "nbdkit"); !ok || got != 25 {
		t.Errorf("Median(seq, nbdkit) = %v, %v; want 25", got, ok)
	}
}

var testTable = [][]string{
	{"measurement", "unit", "rackboot", "best ref"},
	{"rand read QD1", "µs/IO", "12.2", "n/a"},
	{"a|b", "MB/s", "1000", "1"},
}

func TestWriteTextTable(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	WriteTextTable(&b, testTable)
	want := "measurement    unit   rackboot  best ref\n" +
		"----------------------------------------\n" +
		"rand read QD1  µs/IO      12.2       n/a\n" +
		"a|b            MB/s       1000         1\n"
	if got := b.String(); got != want {
		t.Errorf("WriteTextTable =\n%s\nwant\n%s", got, want)
	}
}

func TestWriteMarkdownTable(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	WriteMarkdownTable(&b, testTable)
	want := "| measurement | unit | rackboot | best ref |\n" +
		"| --- | --- | ---: | ---: |\n" +
		"| rand read QD1 | µs/IO | 12.2 | n/a |\n" +
		"| a\\|b | MB/s | 1000 | 1 |\n"
	if got := b.String(); got != want {
		t.Errorf("WriteMarkdownTable =\n%s\nwant\n%s", got, want)
	}
}

func TestReport(t *testing.T) {
	t.Parallel()
	r := Report{Header: []string{"title", "machine: m"}, Tables: [][][]string{{{"a", "b", "c"}, {"x", "y", "1"}}, {{"d", "e"}}}, Notes: []string{"n | 1"}}
	var text, md bytes.Buffer
	r.WriteText(&text)
	r.WriteMarkdown(&md)
	wantText := "title\nmachine: m\n\na  b  c\n-------\nx  y  1\n\nd  e\n----\n\n- n | 1\n"
	if got := text.String(); got != wantText {
		t.Errorf("WriteText = %q; want %q", got, wantText)
	}
	wantMD := "### title\n\nmachine: m  \n\n| a | b | c |\n| --- | --- | ---: |\n| x | y | 1 |\n\n| d | e |\n| --- | --- |\n\n- n | 1\n"
	if got := md.String(); got != wantMD {
		t.Errorf("WriteMarkdown = %q; want %q", got, wantMD)
	}
}

func TestRatioCells(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		q    float64
		ok   bool
		want string
	}{{1.2, true, "1.20x met"}, {0.996, true, "1.00x met"}, {0.994, true, "0.99x MISSED"}, {0.995, true, "0.99x MISSED"}, {0.9951, true, "1.00x met"}, {0, false, "n/a n/a"}} {
		if got := strings.Join(RatioCells(tc.q, tc.ok), " "); got != tc.want {
			t.Errorf("RatioCells(%v, %v) = %q; want %q", tc.q, tc.ok, got, tc.want)
		}
	}
}

func TestWriteFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "out.md")
	if err := WriteFile(path, func(w io.Writer) { io.WriteString(w, "hello\n") }); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "hello\n" {
		t.Errorf("file holds %q, %v; want hello", b, err)
	}
	if err := WriteFile(filepath.Join(path, "x"), func(io.Writer) {}); err == nil {
		t.Error("WriteFile under a file succeeded; want an error")
	}
}

func TestMachineInfo(t *testing.T) {
	t.Parallel()
	m := MachineInfo()
	if len(m) != 2 || !strings.Contains(m[0], " cores") || !strings.Contains(m[1], ", kernel ") {
		t.Errorf("MachineInfo() = %q", m)
	}
	if l := LoadAverage(); l == "" {
		t.Error("LoadAverage() is empty")
	}
}

func TestCreateRandomFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	const size = 4<<20 + 123 // more than one chunk
	for _, p := range []string{a, b} {
		if err := CreateRandomFile(t.Context(), p, size, 0o444, "image"); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(a)
	if err != nil || fi.Size() != size || fi.Mode().Perm() != 0o444 {
		t.Fatalf("Stat = %v, %v; want %d bytes, mode 0444", fi, err, size)
	}
	sa, err1 := SHA256File(a, "image")
	sb, err2 := SHA256File(b, "image")
	if err1 != nil || err2 != nil || len(sa) != 64 || sa == sb {
		t.Errorf("SHA256File = %s, %v and %s, %v; want two different hashes", sa, err1, sb, err2)
	}
	if err := CreateRandomFile(t.Context(), a, size, 0o644, "file"); err == nil || !strings.HasPrefix(err.Error(), "creating file: ") {
		t.Errorf("CreateRandomFile(existing) = %v; want a 'creating file' error", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := CreateRandomFile(ctx, filepath.Join(dir, "c"), size, 0o644, "file"); err != context.Canceled {
		t.Errorf("CreateRandomFile(canceled) = %v; want context.Canceled", err)
	}
}

func TestGroup(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// A leader and a child of it, in a group of their own.
	cmd := GroupCommand([]string{sh, "-c", `echo "$GREETING"; pwd; sleep 30 & wait`}, []string{"GREETING=hello"}, dir, logf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	g := &Group{PGID: cmd.Process.Pid, LogPath: logPath}
	deadline := time.Now().Add(5 * time.Second)
	for len(GroupPIDs(g.PGID)) < 2 || !strings.Contains(g.Log(), dir) {
		if time.Now().After(deadline) {
			t.Fatalf("group has %v; log %q", GroupPIDs(g.PGID), g.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if state, pgrp, err := ProcStat(cmd.Process.Pid); err != nil || pgrp != g.PGID || state == 'Z' {
		t.Errorf("ProcStat(leader) = %c, %d, %v; want alive in group %d", state, pgrp, err, g.PGID)
	}
	if got, want := g.LogTail(), "; log: hello | "+dir; got != want {
		t.Errorf("LogTail() = %q; want %q", got, want)
	}
	if !g.Alive() {
		t.Fatal("Alive() = false for a running group")
	}
	if err := g.Stop(); err != nil {
		t.Errorf("Stop() = %v", err)
	}
	if g.Alive() {
		t.Errorf("group still has %v after Stop", GroupPIDs(g.PGID))
	}
	if got := LogTail(filepath.Join(dir, "missing")); got != "" {
		t.Errorf("LogTail(missing) = %q; want empty", got)
	}
}

func TestStatFields(t *testing.T) {
	t.Parallel()
	f, err := StatFields(os.Getpid())
	if err != nil || len(f) < 15 {
		t.Fatalf("StatFields(self) = %q, %v", f, err)
	}
	if _, err := StatFields(-1); err == nil {
		t.Error("StatFields(-1) succeeded; want an error")
	}
	if got := TicksDuration(250); got != 2500*time.Millisecond {
		t.Errorf("TicksDuration(250) = %v; want 2.5s", got)
	}
}

func TestSampler(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	s := StartSampler(time.Millisecond, func() { n.Add(1) })
	time.Sleep(50 * time.Millisecond)
	s.Stop()
	after := n.Load()
	time.Sleep(10 * time.Millisecond)
	if after == 0 || n.Load() != after {
		t.Errorf("sampled %d times, then %d after Stop; want some, then no more", after, n.Load())
	}
}

func TestSleepCtx(t *testing.T) {
	t.Parallel()
	if err := SleepCtx(t.Context(), time.Millisecond); err != nil {
		t.Errorf("SleepCtx = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := SleepCtx(ctx, time.Hour); err != context.Canceled {
		t.Errorf("SleepCtx(canceled) = %v; want context.Canceled", err)
	}
}

func TestRackbootBinary(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	exe := filepath.Join(dir, "rackboot")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := RackbootBinary(exe); err != nil || got != exe {
		t.Errorf("RackbootBinary(exe) = %q, %v", got, err)
	}
	for _, p := range []string{"", dir, filepath.Join(dir, "missing")} {
		if _, err := RackbootBinary(p); err == nil {
			t.Errorf("RackbootBinary(%q) succeeded; want an error", p)
		}
	}
}

func TestParseBytes(t *testing.T) {
	t.Parallel()
	tests := map[string]int64{
		"4096": 4096, "64M": 64 << 20, "256M": 256 << 20, "1G": 1 << 30, "1GiB": 1 << 30,
		"16m": 16 << 20, "8KB": 8 << 10, "2T": 2 << 40,
	}
	for in, want := range tests {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1", "1.5G", "x"} {
		if got, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d; want an error", in, got)
		}
	}
}
