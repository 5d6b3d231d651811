package rawio

import (
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxIovecs bounds one writev; the rest goes in the next call.
const maxIovecs = 64

func read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

func writev(fd uintptr, bufs [][]byte) (int, syscall.Errno) {
	var iov [maxIovecs]unix.Iovec
	k := 0
	for _, b := range bufs {
		if k == len(iov) {
			break
		}
		if len(b) == 0 {
			continue
		}
		iov[k].Base = &b[0]
		iov[k].SetLen(len(b))
		k++
	}
	n, _, e := syscall.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(k))
	return int(n), e
}

// pollReadable blocks in ppoll for up to d until fd is readable.
func pollReadable(fd uintptr, d time.Duration) bool {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	revents, e := ppoll(int(fd), unix.POLLIN, &ts)
	return e == 0 && revents != 0
}

// ppoll waits until fd has one of events, an error or a hang-up, or
// until ts has passed (never if nil), and returns the events it has (0
// on a timeout). It is an ordinary system call (through the scheduler),
// since it blocks.
func ppoll(fd int, events int16, ts *unix.Timespec) (int16, syscall.Errno) {
	pfd := unix.PollFd{Fd: int32(fd), Events: events}
	_, _, e := syscall.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	return pfd.Revents, e
}

// File reads a regular file, from the page cache without a trip through
// the scheduler when it can. It is safe for concurrent use.
type File struct {
	f      *os.File
	rc     syscall.RawConn
	nowait atomic.Bool // preadv2(RWF_NOWAIT) works on this file
	reqs   sync.Pool   // of *preadReq
}

// preadReq is one ReadAt's arguments and results, with the bound method
// rc.Control calls: pooled, so that a read allocates nothing.
type preadReq struct {
	p     []byte
	off   int64
	n     int
	errno syscall.Errno
	fn    func(fd uintptr)
}

func (r *preadReq) pread(fd uintptr) {
	iov := unix.Iovec{Base: &r.p[0]}
	iov.SetLen(len(r.p))
	lo, hi := uintptr(r.off), uintptr(uint64(r.off)>>(bits.UintSize/2)>>(bits.UintSize/2))
	n, _, e := syscall.RawSyscall6(unix.SYS_PREADV2, fd, uintptr(unsafe.Pointer(&iov)), 1, lo, hi, unix.RWF_NOWAIT)
	r.n, r.errno = int(n), e
}

// NewFile returns a File reading f. f stays owned by the caller.
func NewFile(f *os.File) *File {
	rf := &File{f: f}
	rf.reqs.New = func() any {
		r := new(preadReq)
		r.fn = r.pread
		return r
	}
	if rc, err := f.SyscallConn(); err == nil {
		rf.rc = rc
		rf.nowait.Store(true)
	}
	return rf
}

// ReadAt reads len(p) bytes at off, as io.ReaderAt.
func (rf *File) ReadAt(p []byte, off int64) (int, error) {
	if len(p) > 0 && off >= 0 && rf.nowait.Load() {
		r := rf.reqs.Get().(*preadReq)
		r.p, r.off, r.n, r.errno = p, off, 0, 0
		err := rf.rc.Control(r.fn)
		n, errno := r.n, r.errno
		r.p = nil
		rf.reqs.Put(r)
		switch {
		case err != nil:
		case errno == 0 && n == len(p):
			return n, nil
		case errno == syscall.EOPNOTSUPP || errno == syscall.ENOSYS || errno == syscall.EINVAL:
			rf.nowait.Store(false) // not on this kernel or file system
		}
		// Short, not cached (EAGAIN) or failed: the ordinary read below
		// finishes the job, blocking if it must, and reports errors and
		// EOF as os.File does.
	}
	return rf.f.ReadAt(p, off)
}
