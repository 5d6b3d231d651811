// Package rawio does the I/O of the NBD hot path with raw system calls.
//
// Every ordinary system call in Go passes through the scheduler
// (entersyscall/exitsyscall), and the first one after the process went
// idle also wakes the runtime's monitor thread, which then polls every
// 20µs for a while. A server answering one small request at a time (a
// client at queue depth 1) goes idle between every request, and on a
// small virtual machine those wake-ups cost more than the request itself.
// The calls here never block, so they can skip the scheduler: socket
// reads and writes on non-blocking descriptors wait in the network poller
// instead, and file reads first try preadv2(RWF_NOWAIT), which only
// succeeds from the page cache, falling back to an ordinary pread.
//
// A Conn can also be told to wait in the kernel (see SetKernelWait)
// before it parks in the poller: at queue depth 1 that lets the kernel
// wake the serving thread directly when the next request arrives, as it
// would a C server's, instead of waking the poller's thread, which then
// wakes another to run the goroutine.
package rawio

import (
	"io"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// maxIovecs bounds one writev; the rest goes in the next call.
const maxIovecs = 64

// Conn reads and writes a socket with raw system calls, waiting in the
// network poller (and honouring the connection's deadlines) when it would
// block. One goroutine at a time may Read, and one at a time may call
// WriteBuffers: each direction keeps its state in the Conn, so that a
// call allocates nothing.
type Conn struct {
	rc syscall.RawConn

	// Each direction's arguments and results, and the bound method
	// the poller calls.
	rp      []byte
	rn      int
	rerrno  syscall.Errno
	rwait   time.Duration // see SetKernelWait
	readFn  func(fd uintptr) bool
	wback   [][]byte // wbufs' backing array, kept between calls
	wbufs   [][]byte
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

// NewConn returns a Conn for c, or nil when c offers no raw access.
func NewConn(c syscall.Conn) *Conn {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	conn := &Conn{rc: rc}
	conn.readFn = conn.readOnce
	conn.writeFn = conn.writeAll
	return conn
}

// Read reads into p, as io.Reader.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rp, c.rn, c.rerrno = p, 0, 0
	err := c.rc.Read(c.readFn)
	c.rp = nil
	switch {
	case err != nil:
		return 0, err
	case c.rerrno != 0:
		return 0, os.NewSyscallError("read", c.rerrno)
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

// MaxKernelWait bounds SetKernelWait: a thread waiting in the kernel
// keeps its P, and the runtime takes a P back from a system call that
// blocks for 10ms when no other is idle.
const MaxKernelWait = 5 * time.Millisecond

// kernelWaitCap is MaxKernelWait, but for tests that must see a wait.
var kernelWaitCap = MaxKernelWait

// kernelWaiters counts the threads waiting in the kernel in Read, across
// every Conn; see SetKernelWait.
var kernelWaiters atomic.Int32

// SetKernelWait makes the following Reads that would block first wait
// for the socket in the kernel (ppoll), for at most d, and only then park
// in the network poller. The thread, and the scheduler's P it holds, wait
// with it, so at most GOMAXPROCS-1 Reads of the whole process wait like
// this at once (none with GOMAXPROCS 1): the others park at once, as they
// do with d = 0, the default. d is capped at MaxKernelWait. Deadlines
// and Close take effect when the wait ends, so they can lag by up to d.
// Call it only between Reads.
func (c *Conn) SetKernelWait(d time.Duration) {
	c.rwait = min(max(d, 0), kernelWaitCap)
}

// WaitReadable waits, in the kernel, for at most d (capped at
// MaxKernelWait) until the socket behind rc is readable, under the same
// limit as SetKernelWait; it returns at once when that limit is reached.
// It reports whether the socket is readable. A datagram server calls it
// before a read that would otherwise park in the network poller.
func WaitReadable(rc syscall.RawConn, d time.Duration) bool {
	d = min(d, kernelWaitCap)
	if d <= 0 {
		return false
	}
	var ok bool
	rc.Control(func(fd uintptr) { ok = kernelWait(fd, d) })
	return ok
}

// readOnce is called by the poller with the socket; false means wait
// until it is readable and call again.
func (c *Conn) readOnce(fd uintptr) bool {
	waited := false
	for {
		c.rn, c.rerrno = read(fd, c.rp)
		switch c.rerrno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if c.rwait > 0 && !waited {
				waited = true
				if kernelWait(fd, c.rwait) {
					continue
				}
			}
			return false
		}
		return true
	}
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

// WriteBuffers writes all of bufs, in order, as one stream.
func (c *Conn) WriteBuffers(bufs ...[]byte) error {
	c.wback = append(c.wback[:0], bufs...)
	c.wbufs, c.werrno = c.wback, 0
	err := c.rc.Write(c.writeFn)
	clear(c.wback) // hold no references to the caller's buffers
	c.wbufs = nil
	if err != nil {
		return err
	}
	if c.werrno != 0 {
		return os.NewSyscallError("writev", c.werrno)
	}
	return nil
}

// writeAll is called by the poller with the socket; false means wait
// until it is writable and call again.
func (c *Conn) writeAll(fd uintptr) bool {
	for {
		for len(c.wbufs) > 0 && len(c.wbufs[0]) == 0 {
			c.wbufs = c.wbufs[1:]
		}
		if len(c.wbufs) == 0 {
			return true
		}
		n, errno := writev(fd, c.wbufs)
		switch errno {
		case 0:
			c.wbufs = consume(c.wbufs, n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werrno = errno
			return true
		}
	}
}

// consume drops the first n bytes of bufs.
func consume(bufs [][]byte, n int) [][]byte {
	for n > 0 && len(bufs) > 0 {
		if n < len(bufs[0]) {
			bufs[0] = bufs[0][n:]
			return bufs
		}
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	return bufs
}
