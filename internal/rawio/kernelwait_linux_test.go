package rawio

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadsInPpoll counts this process's threads that are in ppoll(2) now.
func threadsInPpoll(t *testing.T) int {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/syscall")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(b))
		if len(f) > 0 && f[0] == strconv.Itoa(unix.SYS_PPOLL) {
			n++
		}
	}
	return n
}

// TestConnReadKernelWait: with a kernel wait set, a Read that finds
// nothing waits in ppoll, and the data that arrives then is what it
// returns.
func TestConnReadKernelWait(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs GOMAXPROCS >= 2: with 1, Reads never wait in the kernel")
	}
	defer func(d time.Duration) { kernelWaitCap = d }(kernelWaitCap)
	kernelWaitCap = time.Minute // so that the wait outlasts the test's polling
	before := threadsInPpoll(t)

	a, b := tcpPair(t)
	c := NewConn(b)
	c.SetKernelWait(time.Minute)
	type res struct {
		p   []byte
		err error
	}
	done := make(chan res, 1)
	go func() {
		p := make([]byte, 64)
		n, err := c.Read(p)
		done <- res{p[:n], err}
	}()
	giveUp := time.Now().Add(30 * time.Second)
	for threadsInPpoll(t) <= before {
		select {
		case r := <-done:
			t.Fatalf("Read returned %q, %v before anything was written", r.p, r.err)
		default:
		}
		if time.Now().After(giveUp) {
			t.Fatal("no thread waits in ppoll: the Read parked without waiting in the kernel")
		}
		runtime.Gosched()
	}
	want := []byte("next request")
	if _, err := a.Write(want); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || !bytes.Equal(r.p, want) {
		t.Fatalf("Read = %q, %v; want %q", r.p, r.err, want)
	}
}

// TestKernelWaitLimit: kernelWait waits only while fewer than
// GOMAXPROCS-1 threads do, so that waiting threads never hold every P.
func TestKernelWaitLimit(t *testing.T) {
	a, b := tcpPair(t)
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	rc, err := b.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	wait := func() (ok bool) {
		rc.Control(func(fd uintptr) { ok = kernelWait(fd, time.Second) })
		return ok
	}
	for _, procs := range []int{1, 2, 4} {
		t.Run(fmt.Sprint("GOMAXPROCS=", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			for others := range int32(procs) {
				kernelWaiters.Store(others)
				got, want := wait(), others < int32(procs)-1
				kernelWaiters.Store(0)
				if got != want {
					t.Errorf("with %d threads waiting: kernelWait on a readable socket = %v, want %v", others, got, want)
				}
			}
		})
	}
}

// TestConnReadKernelWaitDeadline: a deadline still ends a Read that
// waited in the kernel first.
func TestConnReadKernelWaitDeadline(t *testing.T) {
	_, b := tcpPair(t)
	c := NewConn(b)
	c.SetKernelWait(time.Millisecond)
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Read(make([]byte, 10)); !os.IsTimeout(err) {
		t.Fatalf("Read after the deadline: %v, want a timeout", err)
	}
}

// TestWaitReadable: WaitReadable reports a socket with data to read, and
// gives up on one without after its wait.
func TestWaitReadable(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs GOMAXPROCS >= 2: with 1, nothing waits in the kernel")
	}
	a, b := tcpPair(t)
	rc, err := b.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if WaitReadable(rc, time.Millisecond) {
		t.Fatal("WaitReadable = true with nothing sent")
	}
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if !WaitReadable(rc, time.Second) {
		t.Fatal("WaitReadable = false with a byte to read")
	}
	if WaitReadable(rc, 0) {
		t.Fatal("WaitReadable(0) = true: a zero wait must not wait at all")
	}
}
