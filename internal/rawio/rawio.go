// Package rawio does the I/O of the NBD hot path with raw system calls.
//
// Every ordinary system call in Go passes through the scheduler
// (entersyscall/exitsyscall), and the first one after the process went
// idle also wakes the runtime's monitor thread, which then polls every
// 20µs for a while. A server answering one small request at a time (a
// client at queue depth 1) goes idle between every request, and on a
// small virtual machine those wake-ups cost more than the request itself.
//
// File reads first try preadv2(RWF_NOWAIT), which only succeeds from the
// page cache and so never blocks, as a raw system call, falling back to
// an ordinary pread.
//
// A Sock is a connection taken out of the runtime's network poller (see
// Detach), read and written the way a C server does: a socket in the
// poller wakes the poller's thread for every segment that arrives, even
// while the goroutine that will read it is already running, so at queue
// depth 1 every request woke two threads instead of one.
//
// WaitReadable lets a datagram server wait in the kernel for a moment
// before it parks in the poller, so that the next packet wakes the
// thread that reads it.
package rawio

import (
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// MaxKernelWait bounds WaitReadable: a thread waiting in the kernel
// keeps its P, and the runtime takes a P back from a system call that
// blocks for 10ms when no other is idle.
const MaxKernelWait = 5 * time.Millisecond

// kernelWaitCap is MaxKernelWait, but for tests that must see a wait.
var kernelWaitCap = MaxKernelWait

// kernelWaiters counts the threads waiting in the kernel in
// WaitReadable, across the process.
var kernelWaiters atomic.Int32

// WaitReadable waits, in the kernel, for at most d (capped at
// MaxKernelWait) until the socket behind rc is readable. The thread, and
// the scheduler's P it holds, wait with it, so at most GOMAXPROCS-1
// threads of the process wait like this at once (none with GOMAXPROCS 1):
// beyond that it returns at once. It reports whether the socket is
// readable. A datagram server calls it before a read that would otherwise
// park in the network poller, so that the kernel wakes the serving thread
// directly when the next packet arrives, as it would a C server's, and
// that thread reads at once, instead of the poller's thread waking
// another to run the goroutine. (A thread waiting in the poller is still
// woken too: only a Sock leaves the poller.)
func WaitReadable(rc syscall.RawConn, d time.Duration) bool {
	d = min(d, kernelWaitCap)
	if d <= 0 {
		return false
	}
	var ok bool
	rc.Control(func(fd uintptr) { ok = kernelWait(fd, d) })
	return ok
}

// kernelWait waits up to d for fd to become readable, in the kernel,
// if fewer than GOMAXPROCS-1 other threads are doing so. It reports
// whether fd is readable (or has an error or hang-up to read).
func kernelWait(fd uintptr, d time.Duration) bool {
	limit := int32(runtime.GOMAXPROCS(0) - 1)
	if kernelWaiters.Add(1) > limit {
		kernelWaiters.Add(-1)
		return false
	}
	defer kernelWaiters.Add(-1)
	return pollReadable(fd, d)
}
