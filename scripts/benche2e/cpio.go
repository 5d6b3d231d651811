package main

import (
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
)

// archive is an initramfs being assembled: files, symbolic links,
// directories and device nodes by their path inside the archive (no
// leading slash). Its bytes depend only on what was added: entries are
// written sorted, with fixed inode numbers, owners and times.
type archive struct {
	entries map[string]entry
}

type entry struct {
	mode  uint32 // type and permission bits, as in a cpio header
	data  []byte // file contents or link target
	rdev  [2]uint32
	isDir bool
}

// cpio mode bits (newc), which are the same as st_mode's.
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeChar    = 0o020000
)

func newArchive() *archive { return &archive{entries: map[string]entry{}} }

// dir adds a directory and its parents.
func (a *archive) dir(name string) {
	name = strings.Trim(path.Clean(name), "/")
	for name != "." && name != "" {
		if _, ok := a.entries[name]; !ok {
			a.entries[name] = entry{mode: modeDir | 0o755, isDir: true}
		}
		name = path.Dir(name)
	}
}

// file adds data at name with permission perm, creating the parents.
func (a *archive) file(name string, perm fs.FileMode, data []byte) {
	name = strings.Trim(path.Clean(name), "/")
	a.dir(path.Dir(name))
	a.entries[name] = entry{mode: modeFile | uint32(perm.Perm()), data: data}
}

// copyFile adds the contents of the host file src (symbolic links
// followed) at name, keeping its permission bits.
func (a *archive) copyFile(name, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	a.file(name, fi.Mode().Perm(), b)
	return nil
}

// symlink adds a symbolic link at name pointing to target.
func (a *archive) symlink(name, target string) {
	name = strings.Trim(path.Clean(name), "/")
	a.dir(path.Dir(name))
	a.entries[name] = entry{mode: modeSymlink | 0o777, data: []byte(target)}
}

// charDev adds a character device node.
func (a *archive) charDev(name string, perm fs.FileMode, major, minor uint32) {
	name = strings.Trim(path.Clean(name), "/")
	a.dir(path.Dir(name))
	a.entries[name] = entry{mode: modeChar | uint32(perm.Perm()), rdev: [2]uint32{major, minor}}
}

// writeTo writes the archive as a newc cpio stream.
func (a *archive) writeTo(w io.Writer) error {
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range a.entries {
			if !yield(n) {
				return
			}
		}
	})
	ino := uint32(1)
	for _, n := range names {
		e := a.entries[n]
		nlink := uint32(1)
		if e.isDir {
			nlink = 2
		}
		if err := writeEntry(w, n, ino, e.mode, nlink, e.rdev, e.data); err != nil {
			return err
		}
		ino++
	}
	return writeEntry(w, "TRAILER!!!", 0, 0, 1, [2]uint32{}, nil)
}

// writeEntry writes one newc header, its name and its data, each padded
// to four bytes.
func writeEntry(w io.Writer, name string, ino, mode, nlink uint32, rdev [2]uint32, data []byte) error {
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+4+len(data)+3)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	buf = append(buf, data...)
	buf = pad4(buf)
	_, err := w.Write(buf)
	return err
}

// pad4 pads b, which starts at a four-byte boundary, to the next one.
func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// writeGzip writes the archive gzip-compressed to path, with no name or
// time in the gzip header.
func (a *archive) writeGzip(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(f, gzip.BestCompression)
	if err != nil {
		f.Close()
		return err
	}
	if err := a.writeTo(zw); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}
