package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"syscall"
)

// FileHandler returns a Handler that serves the regular files under root.
// Through os.Root, symbolic links are followed only while they stay inside
// the tree; a link out of it is refused with fs.ErrPermission (TFTP error
// 2), as are directories, devices, sockets and FIFOs. The size comes from
// the open file. The Handler is safe for concurrent use; root must stay
// open while it is in use.
func FileHandler(root *os.Root) Handler {
	return func(_ context.Context, name string, _ netip.AddrPort) (io.ReadCloser, int64, error) {
		// O_NONBLOCK keeps a FIFO planted in the tree from blocking the
		// open; it changes nothing for regular files.
		f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, 0, openError(name, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("opening %s: %w", name, err)
		}
		if !fi.Mode().IsRegular() {
			f.Close()
			return nil, 0, fmt.Errorf("opening %s: %v is not a regular file: %w", name, fi.Mode().Type(), fs.ErrPermission)
		}
		return f, fi.Size(), nil
	}
}

// openError classifies an error from os.Root.Open: missing files, and paths
// through a regular file ("a/b" where a is a file), are not found; faults
// of the server (out of descriptors or memory, I/O errors) stay as they
// are; anything else is the client asking for something we don't serve (a
// symbolic link out of the tree, which os.Root reports with an unexported
// error; a link loop; a name too long), so it is refused.
func openError(name string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
		return err
	case errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("opening %s: %w: %w", name, fs.ErrNotExist, err)
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE),
		errors.Is(err, syscall.ENOMEM), errors.Is(err, syscall.EIO):
		return err
	default:
		return fmt.Errorf("opening %s: %w: %w", name, fs.ErrPermission, err)
	}
}
