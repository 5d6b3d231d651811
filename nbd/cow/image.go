package cow

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/rackboot/rackboot/internal/rawio"
)

// Image is a read-only base image. The file is opened O_RDONLY, so nothing
// in this process can write the master whatever a client sends. It
// implements nbd.Device (writes fail with EROFS) and Base, and is safe for
// concurrent use.
type Image struct {
	f    *os.File
	r    *rawio.File
	size int64
	id   string
}

// OpenImage opens a regular file or block device as a base image.
func OpenImage(path string) (*Image, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("opening image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening image: %w", err)
	}
	if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
		f.Close()
		return nil, fmt.Errorf("opening image %s: not a regular file or block device", path)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sizing image %s: %w", path, err)
	}
	if size == 0 {
		f.Close()
		return nil, fmt.Errorf("opening image %s: empty", path)
	}
	id := fmt.Sprintf("size=%d", size)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id = fmt.Sprintf("dev=%d ino=%d size=%d mtime=%d", st.Dev, st.Ino, size, fi.ModTime().UnixNano())
	}
	return &Image{f: f, r: rawio.NewFile(f), size: size, id: id}, nil
}

// File returns the image's open file, for sendfile(2).
func (m *Image) File() *os.File { return m.f }

// Path returns the image's file name.
func (m *Image) Path() string { return m.f.Name() }

// Identity identifies the image file's contents as far as metadata can:
// device, inode, size and modification time. A write layer records it and
// refuses to reopen over a different image.
func (m *Image) Identity() string { return m.id }

// ReadAt reads from the image.
func (m *Image) ReadAt(p []byte, off int64) (int, error) { return m.r.ReadAt(p, off) }

// ReadFiles sends [off, off+n) from the image file (nbd.FileReader).
func (m *Image) ReadFiles(off, n int64, send func(f *os.File, off, n int64) error) error {
	if off < 0 || n < 0 || off > m.size || n > m.size-off {
		return fmt.Errorf("read %d+%d of %d bytes: %w", off, n, m.size, syscall.EINVAL)
	}
	return send(m.f, off, n)
}

// WriteAt always fails: base images are never written.
func (m *Image) WriteAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("image %s: %w", m.f.Name(), syscall.EROFS)
}

// Size returns the image size in bytes.
func (m *Image) Size() int64 { return m.size }

// Sync does nothing: the image is never written.
func (m *Image) Sync() error { return nil }

// Close closes the image file.
func (m *Image) Close() error { return m.f.Close() }
