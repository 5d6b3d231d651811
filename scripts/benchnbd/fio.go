package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// errHung is returned by runFio when fio produced no result in time: a
// server that never greets a connection leaves libnbd (which has no connect
// timeout) waiting forever, and fio with it.
var errHung = errors.New("fio hung")

// fioJob is one fio run with the nbd ioengine (libnbd).
type fioJob struct {
	name    string
	uri     string
	rw      string // fio rw=: read, randread, randwrite
	bs      string
	depth   int
	jobs    int           // fio numjobs: each job (a thread) opens its own NBD connection
	ioSize  int64         // if > 0, stop after this many bytes per job instead of after runtime
	runtime time.Duration // measured time of a time-based run
	ramp    time.Duration // unmeasured warm-up of a time-based run
	// stagger, if set, starts each job after a random delay up to stagger
	// (fio startdelay range), so the jobs' connections don't all arrive at once.
	stagger time.Duration
	// hold, if set, is called after the I/O finished but while fio still
	// holds its NBD connection open (through fio's exec_postrun).
	hold func()
	// cpus, if set, pins fio to these CPUs (taskset -c).
	cpus string
}

// fioResult is the aggregate of all jobs of a run.
type fioResult struct {
	iops float64
	bw   float64 // bytes per second
	// runtime is the measured time (after ramp_time) of the longest job;
	// iops and bw are over it.
	runtime time.Duration
	// end is when fio's I/O ended: the time of fio's report (a few ms after
	// its last I/O), or when fio exited if the report has none.
	end time.Time
}

type fioStats struct {
	IOPS      float64 `json:"iops"`
	BWBytes   float64 `json:"bw_bytes"`
	IOBytes   int64   `json:"io_bytes"`
	RuntimeMS int64   `json:"runtime"`
}

type fioOutput struct {
	TimestampMS int64 `json:"timestamp_ms"`
	Jobs        []struct {
		Jobname string   `json:"jobname"`
		Error   int      `json:"error"`
		Read    fioStats `json:"read"`
		Write   fioStats `json:"write"`
	} `json:"jobs"`
}

// parseFio sums the read and write figures of every job in fio's JSON output.
func parseFio(b []byte) (fioResult, error) {
	// Some fio versions print notices before the JSON document.
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	var out fioOutput
	if err := json.Unmarshal(b, &out); err != nil {
		return fioResult{}, fmt.Errorf("parsing fio JSON: %w", err)
	}
	if len(out.Jobs) == 0 {
		return fioResult{}, errors.New("parsing fio JSON: no jobs")
	}
	var r fioResult
	var ioBytes int64
	for _, j := range out.Jobs {
		if j.Error != 0 {
			return fioResult{}, fmt.Errorf("fio job %s: error %d (%w)", j.Jobname, j.Error, syscall.Errno(j.Error))
		}
		r.iops += j.Read.IOPS + j.Write.IOPS
		r.bw += j.Read.BWBytes + j.Write.BWBytes
		ioBytes += j.Read.IOBytes + j.Write.IOBytes
		r.runtime = max(r.runtime, time.Duration(max(j.Read.RuntimeMS, j.Write.RuntimeMS))*time.Millisecond)
	}
	if ioBytes == 0 {
		return fioResult{}, errors.New("fio did no I/O")
	}
	if out.TimestampMS > 0 {
		r.end = time.UnixMilli(out.TimestampMS)
	}
	return r, nil
}

// args returns fio's command line for j, writing its JSON to out.
func (j fioJob) args(out string) []string {
	a := []string{
		"--name=" + j.name,
		"--ioengine=nbd",
		"--uri=" + j.uri,
		"--rw=" + j.rw,
		"--bs=" + j.bs,
		"--iodepth=" + strconv.Itoa(j.depth),
		"--numjobs=" + strconv.Itoa(max(j.jobs, 1)),
		// Jobs are threads of one process, so that killing it stops them all.
		"--thread",
		"--group_reporting",
		"--output-format=json",
		"--output=" + out,
	}
	if j.stagger > 0 {
		a = append(a, "--startdelay=0ms:"+strconv.FormatInt(j.stagger.Milliseconds(), 10)+"ms")
	}
	if j.ioSize > 0 {
		a = append(a, "--io_size="+strconv.FormatInt(j.ioSize, 10))
	} else {
		a = append(a, "--time_based",
			"--runtime="+strconv.FormatInt(j.runtime.Milliseconds(), 10)+"ms",
			"--ramp_time="+strconv.FormatInt(j.ramp.Milliseconds(), 10)+"ms")
	}
	return a
}

// runFio runs j in dir and returns its aggregate figures.
func runFio(ctx context.Context, dir string, j fioJob) (fioResult, error) {
	out := filepath.Join(dir, j.name+".json")
	args := append([]string{"fio"}, j.args(out)...)
	args = pinned(j.cpus, args)
	var ready, release *os.File
	if j.hold != nil {
		var err error
		if ready, release, err = holdFIFOs(dir, j.name); err != nil {
			return fioResult{}, err
		}
		defer ready.Close()
		defer release.Close()
		// fio runs this through system() after the job's I/O and before it
		// closes the job's files, i.e. its NBD connection.
		args = append(args, fmt.Sprintf("--exec_postrun=sh -c 'echo ready >%s; read x <%s'", ready.Name(), release.Name()))
	}
	var stderr bytes.Buffer
	started := time.Now()
	cmd, done, err := startCmd(args, nil, dir, &stderr)
	if err != nil {
		return fioResult{}, err
	}
	limit := 5 * time.Minute
	if j.ioSize == 0 {
		limit = j.stagger + j.ramp + j.runtime + 30*time.Second
	}
	timeout := time.NewTimer(limit)
	defer timeout.Stop()

	readyc := make(chan struct{})
	if ready != nil {
		go func() {
			var b [16]byte
			if n, _ := ready.Read(b[:]); n > 0 {
				close(readyc)
			}
		}()
	}
	var waitErr error
wait:
	for {
		select {
		case <-readyc:
			readyc = nil
			j.hold()
			if _, err := release.WriteString("go\n"); err != nil {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		case waitErr = <-done:
			break wait
		case <-timeout.C:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return fioResult{}, fmt.Errorf("fio %s: no result after %v: %w", j.name, limit, errHung)
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return fioResult{}, ctx.Err()
		}
	}
	exited := time.Now()
	msg := strings.TrimSpace(stderr.String())
	if waitErr != nil {
		return fioResult{}, fmt.Errorf("fio %s: %w: %s", j.name, waitErr, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return fioResult{}, fmt.Errorf("reading fio output: %w", err)
	}
	r, err := parseFio(b)
	if err != nil {
		return fioResult{}, fmt.Errorf("fio %s: %w: %s", j.name, err, msg)
	}
	if j.hold != nil && readyc != nil {
		return fioResult{}, fmt.Errorf("fio %s: exec_postrun never ran", j.name)
	}
	if r.end.IsZero() || r.end.Before(started) || r.end.After(exited) {
		r.end = exited
	}
	return r, nil
}

// holdFIFOs creates the two FIFOs of fio's exec_postrun hook. Both are
// opened read-write, which on Linux never blocks and keeps a writer and a
// reader present: reads of ready wait for data (and end when it is closed),
// and the hook's open of release succeeds at once.
func holdFIFOs(dir, name string) (ready, release *os.File, err error) {
	var files []*os.File
	for _, suffix := range []string{".ready", ".release"} {
		p := filepath.Join(dir, name+suffix)
		_ = os.Remove(p)
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			closeAll(files)
			return nil, nil, fmt.Errorf("creating FIFO %s: %w", p, err)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			closeAll(files)
			return nil, nil, fmt.Errorf("opening FIFO %s: %w", p, err)
		}
		files = append(files, f)
	}
	return files[0], files[1], nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
