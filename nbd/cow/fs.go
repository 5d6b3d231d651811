package cow

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// File is the part of *os.File a layer uses.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes the file's data durable (fdatasync for OS files).
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Close() error
}

// FS is the filesystem a layer lives in. OSFS is the real one; tests
// provide their own to inject faults and power cuts.
type FS interface {
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	Rename(oldpath, newpath string) error
	// SyncDir makes the directory's entries (creations, renames) durable.
	SyncDir(dir string) error
}

// OSFS is the operating system's filesystem.
type OSFS struct{}

// OpenFile opens a file with os.OpenFile.
func (OSFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// Rename renames with os.Rename.
func (OSFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

// SyncDir fsyncs a directory.
func (OSFS) SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// osFile is an *os.File whose Sync is fdatasync and which can punch holes.
type osFile struct{ *os.File }

func (f osFile) Sync() error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// Allocate gives [off, off+n) disk space, extending the file if needed.
func (f osFile) Allocate(off, n int64) error { return f.fallocate(0, off, n) }

func (f osFile) PunchHole(off, n int64) error {
	return f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (f osFile) ZeroRange(off, n int64) error {
	return f.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (f osFile) fallocate(mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), mode, off, n)
		if err != unix.EINTR {
			if err != nil {
				return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

type allocator interface{ Allocate(off, n int64) error }
type holePuncher interface{ PunchHole(off, n int64) error }
type rangeZeroer interface{ ZeroRange(off, n int64) error }

// unsupported reports errors that mean the filesystem can't do the
// operation, so a fallback is needed.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)
}

// punchHole makes a range of f read as zeroes and gives its space back,
// writing zeroes where the filesystem can't punch.
func punchHole(f File, off, n int64) error {
	if p, ok := f.(holePuncher); ok {
		err := p.PunchHole(off, n)
		if err == nil || !unsupported(err) {
			return err
		}
	}
	return writeZeroBytes(f, off, n)
}

// zeroRange makes a range of f read as zeroes and keeps it allocated.
func zeroRange(f File, off, n int64) error {
	if z, ok := f.(rangeZeroer); ok {
		err := z.ZeroRange(off, n)
		if err == nil || !unsupported(err) {
			return err
		}
	}
	return writeZeroBytes(f, off, n)
}

func writeZeroBytes(f File, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.WriteAt(buf[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}
