//go:build !linux

package rawio

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// pollReadable waits in the poller instead on this system.
func pollReadable(uintptr, time.Duration) bool { return false }

// File reads a file; on this system it is os.File.ReadAt.
type File struct{ f *os.File }

// NewFile returns a File reading f.
func NewFile(f *os.File) *File { return &File{f: f} }

// ReadAt reads len(p) bytes at off, as io.ReaderAt.
func (rf *File) ReadAt(p []byte, off int64) (int, error) { return rf.f.ReadAt(p, off) }

// Sock is not available on this system: Detach always fails, and
// callers go on with the net.Conn.
type Sock struct{}

// Detach fails on this system.
func Detach(net.Conn) (*Sock, error) { return nil, errors.ErrUnsupported }

func (*Sock) SetWriteTimeout(time.Duration)         {}
func (*Sock) YieldWhile(*atomic.Int32)              {}
func (*Sock) Read([]byte) (int, error)              { return 0, errors.ErrUnsupported }
func (*Sock) WriteBuffers(...[]byte) error          { return errors.ErrUnsupported }
func (*Sock) SendFile(*os.File, int64, int64) error { return errors.ErrUnsupported }
func (*Sock) CloseRead() error                      { return errors.ErrUnsupported }
func (*Sock) Shutdown() error                       { return errors.ErrUnsupported }
func (*Sock) Close() error                          { return errors.ErrUnsupported }
