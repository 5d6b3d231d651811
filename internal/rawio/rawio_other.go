//go:build !linux

package rawio

import (
	"os"
	"syscall"
	"time"
)

func read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}

func writev(fd uintptr, bufs [][]byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), bufs[0])
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}

// pollReadable waits in the poller instead on this system.
func pollReadable(uintptr, time.Duration) bool { return false }

// File reads a file; on this system it is os.File.ReadAt.
type File struct{ f *os.File }

// NewFile returns a File reading f.
func NewFile(f *os.File) *File { return &File{f: f} }

// ReadAt reads len(p) bytes at off, as io.ReaderAt.
func (rf *File) ReadAt(p []byte, off int64) (int, error) { return rf.f.ReadAt(p, off) }
