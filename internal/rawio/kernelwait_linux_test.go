package rawio

import (
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
