package rawio

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sock is a connected stream socket outside the runtime's network poller.
// Reads and writes are raw system calls on a non-blocking descriptor;
// when one would block, the goroutine waits in ppoll(2), holding its
// thread as a C server's thread would, until the socket is ready. The
// kernel then wakes that thread and no other. The runtime hands the
// thread's P to other goroutines once the wait has lasted a while (from
// 20µs to 10ms, depending on whether they need it), so a Sock costs an
// idle thread, not a processor.
//
// One goroutine at a time may Read, and any number may write, each
// write being one call of WriteBuffers or SendFile that the caller
// serialises. CloseRead and Shutdown may be called at any time, from any
// goroutine, to end calls under way; Close only once no Read or write is
// under way.
type Sock struct {
	fd   int
	wait time.Duration // see SetWriteTimeout
	busy *atomic.Int32 // see YieldWhile

	mu     sync.Mutex // orders shutdown and Close
	closed bool
}

// Detach takes c's socket out of the network poller: it duplicates the
// descriptor into a Sock and closes c, which is what removes the socket
// from the poller. Data that c's reader had buffered stays with that
// reader. c must not be in use.
func Detach(c net.Conn) (*Sock, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("detaching %T: %w", c, errors.ErrUnsupported)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("detaching socket: %w", err)
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("detaching socket: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("detaching socket: %w", os.NewSyscallError("fcntl", derr))
	}
	// The duplicate shares the original's open file description, so
	// it is non-blocking too.
	c.Close()
	return &Sock{fd: fd}, nil
}

// SetWriteTimeout bounds each later WriteBuffers and SendFile call: one
// that can't hand all its bytes to the kernel within d fails with an
// error satisfying errors.Is(err, os.ErrDeadlineExceeded). 0, the
// default, means no bound. Call it before writing.
func (s *Sock) SetWriteTimeout(d time.Duration) { s.wait = d }

// YieldWhile makes a Read that finds nothing to read yield the processor
// a few times before it waits, for as long as *n > 0. A server counts
// its requests in flight in n: their goroutines, which would otherwise
// wait for the reader's P, run first, and their replies often bring the
// next requests. Call it before reading.
func (s *Sock) YieldWhile(n *atomic.Int32) { s.busy = n }

// maxYields bounds the yields of one Read (see YieldWhile): past a few,
// more measured no better at queue depth 32.
const maxYields = 4

// Read reads into p, as io.Reader.
func (s *Sock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	yields := 0
	for {
		n, errno := read(uintptr(s.fd), p)
		switch errno {
		case 0:
			if n == 0 {
				return 0, io.EOF
			}
			return n, nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if s.busy != nil && s.busy.Load() > 0 && yields < maxYields {
				yields++
				runtime.Gosched()
				continue
			}
			if err := s.poll(unix.POLLIN|unix.POLLRDHUP, time.Time{}); err != nil {
				return 0, err
			}
			continue
		case syscall.EBADF:
			return 0, net.ErrClosed
		}
		return 0, os.NewSyscallError("read", errno)
	}
}

// WriteBuffers writes all of bufs, in order, as one stream. It may
// modify the elements of bufs.
func (s *Sock) WriteBuffers(bufs ...[]byte) error {
	var deadline time.Time
	for {
		for len(bufs) > 0 && len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
		if len(bufs) == 0 {
			return nil
		}
		n, errno := writev(uintptr(s.fd), bufs)
		switch errno {
		case 0:
			bufs = consume(bufs, n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			deadline = s.deadline(deadline)
			if err := s.poll(unix.POLLOUT, deadline); err != nil {
				return err
			}
		case syscall.EBADF:
			return net.ErrClosed
		default:
			return os.NewSyscallError("writev", errno)
		}
	}
}

// SendFile writes n bytes of f at off, with sendfile(2).
func (s *Sock) SendFile(f *os.File, off, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("sending %s: %w", f.Name(), err)
	}
	var deadline time.Time
	var serr error
	cerr := rc.Control(func(src uintptr) {
		for n > 0 {
			k, err := unix.Sendfile(s.fd, int(src), &off, int(min(n, 1<<30)))
			if k > 0 {
				n -= int64(k)
			}
			switch {
			case err == unix.EAGAIN:
				deadline = s.deadline(deadline)
				if serr = s.poll(unix.POLLOUT, deadline); serr != nil {
					return
				}
			case err == unix.EINTR:
			case err == unix.EBADF:
				serr = net.ErrClosed
				return
			case err != nil:
				serr = os.NewSyscallError("sendfile", err)
				return
			case k == 0:
				serr = fmt.Errorf("sending %s: %w", f.Name(), io.ErrUnexpectedEOF)
				return
			}
		}
	})
	return errors.Join(cerr, serr)
}

// deadline returns d, or the write deadline from now if d is zero.
func (s *Sock) deadline(d time.Time) time.Time {
	if d.IsZero() && s.wait > 0 {
		return time.Now().Add(s.wait)
	}
	return d
}

// poll waits until the socket has one of events, an error or a hang-up,
// or until deadline (never if zero). Unlike the raw calls, it goes
// through the scheduler: it blocks.
func (s *Sock) poll(events int16, deadline time.Time) error {
	for {
		var tsp *unix.Timespec
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return fmt.Errorf("writing socket: %w", os.ErrDeadlineExceeded)
			}
			ts := unix.NsecToTimespec(left.Nanoseconds())
			tsp = &ts
		}
		revents, errno := ppoll(s.fd, events, tsp)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno != 0:
			return os.NewSyscallError("ppoll", errno)
		case revents&unix.POLLNVAL != 0:
			return net.ErrClosed
		case revents == 0:
			continue // timed out: the loop's check reports it
		}
		return nil
	}
}

// CloseRead shuts the reading side down: a Read under way, and every
// later one, returns io.EOF. Writes go on.
func (s *Sock) CloseRead() error {
	return s.shutdown(unix.SHUT_RD)
}

// Shutdown shuts both sides down: calls under way return, and later
// ones fail at once.
func (s *Sock) Shutdown() error {
	return s.shutdown(unix.SHUT_RDWR)
}

func (s *Sock) shutdown(how int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	if err := unix.Shutdown(s.fd, how); err != nil && err != unix.ENOTCONN {
		return os.NewSyscallError("shutdown", err)
	}
	return nil
}

// Close closes the socket. No Read or write may be under way or follow;
// CloseRead and Shutdown may, and then fail.
func (s *Sock) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	s.closed = true
	return os.NewSyscallError("close", unix.Close(s.fd))
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
