package cow

import (
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"sync"
	"time"
)

// memFS is an in-memory FS that models a power cut: each file keeps its
// durable contents (as of its last Sync) and the writes since, and crash
// keeps a random subset of those writes, each torn at 512-byte sector
// granularity, as a page cache flushed at random moments would. Namespace
// operations (create, rename) are durable at once. Faults can be injected.
type memFS struct {
	mu    sync.Mutex
	files map[string]*memFile
	// failSync, when set, is called before each Sync; a non-nil result is
	// returned instead of syncing.
	failSync func(name string) error
	// failWrite likewise for WriteAt.
	failWrite func(name string, off int64, n int) error
}

type memOp struct {
	off   int64
	data  []byte // nil with trunc set: a truncate to off
	trunc bool
}

type memFile struct {
	fs      *memFS
	name    string
	cur     []byte
	durable []byte
	pending []memOp
}

func newMemFS() *memFS { return &memFS{files: make(map[string]*memFile)} }

func (m *memFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.files[name]
	switch {
	case f == nil && flag&os.O_CREATE == 0:
		return nil, &os.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case f != nil && flag&os.O_EXCL != 0:
		return nil, &os.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	case f == nil:
		f = &memFile{fs: m, name: name}
		m.files[name] = f
	case flag&os.O_TRUNC != 0:
		f.apply(memOp{off: 0, trunc: true})
	}
	return &memHandle{f: f}, nil
}

func (m *memFS) Rename(oldpath, newpath string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.files[oldpath]
	if f == nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: fs.ErrNotExist}
	}
	delete(m.files, oldpath)
	f.name = newpath
	m.files[newpath] = f
	return nil
}

func (m *memFS) SyncDir(string) error { return nil }

// crash simulates a power cut. Like a page cache written back at random
// moments, each 512-byte sector of a file ends up holding either its
// durable contents or its contents after any one of the writes since the
// last Sync, independently of the other sectors. (Sizes changed by
// Truncate are kept: every Truncate here is followed by a Sync.) Open
// handles must not be used afterwards.
func (m *memFS) crash(rng *rand.Rand) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range m.files {
		work := append([]byte(nil), f.durable...)
		versions := map[int64][][]byte{} // sector -> contents after each op touching it
		for _, op := range f.pending {
			if op.trunc {
				work = resize(work, op.off)
				continue
			}
			end := op.off + int64(len(op.data))
			if int64(len(work)) < end {
				work = resize(work, end)
			}
			copy(work[op.off:], op.data)
			for s := op.off / 512; s*512 < end; s++ {
				versions[s] = append(versions[s], append([]byte(nil), work[s*512:min(s*512+512, int64(len(work)))]...))
			}
		}
		out := resize(append([]byte(nil), f.durable...), int64(len(f.cur)))
		for s, vs := range versions {
			if s*512 >= int64(len(out)) {
				continue
			}
			if k := rng.IntN(len(vs) + 1); k < len(vs) {
				copy(out[s*512:], vs[k])
			}
		}
		f.cur, f.durable, f.pending = out, append([]byte(nil), out...), nil
	}
}

func resize(b []byte, n int64) []byte {
	if int64(len(b)) >= n {
		return b[:n]
	}
	return append(b, make([]byte, n-int64(len(b)))...)
}

// apply records an operation; the caller holds fs.mu.
func (f *memFile) apply(op memOp) {
	if op.trunc {
		f.cur = resize(f.cur, op.off)
	} else {
		end := op.off + int64(len(op.data))
		if int64(len(f.cur)) < end {
			f.cur = resize(f.cur, end)
		}
		copy(f.cur[op.off:], op.data)
	}
	f.pending = append(f.pending, op)
}

type memHandle struct {
	f      *memFile
	closed bool
}

func (h *memHandle) ReadAt(p []byte, off int64) (int, error) {
	h.f.fs.mu.Lock()
	defer h.f.fs.mu.Unlock()
	if off >= int64(len(h.f.cur)) {
		return 0, io.EOF
	}
	n := copy(p, h.f.cur[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *memHandle) WriteAt(p []byte, off int64) (int, error) {
	if fail := h.f.fs.failWrite; fail != nil {
		if err := fail(h.f.name, off, len(p)); err != nil {
			return 0, err
		}
	}
	h.f.fs.mu.Lock()
	defer h.f.fs.mu.Unlock()
	h.f.apply(memOp{off: off, data: append([]byte(nil), p...)})
	return len(p), nil
}

func (h *memHandle) PunchHole(off, n int64) error {
	h.f.fs.mu.Lock()
	defer h.f.fs.mu.Unlock()
	n = min(n, int64(len(h.f.cur))-off)
	if n > 0 {
		h.f.apply(memOp{off: off, data: make([]byte, n)})
	}
	return nil
}

func (h *memHandle) Sync() error {
	if fail := h.f.fs.failSync; fail != nil {
		if err := fail(h.f.name); err != nil {
			return err
		}
	}
	h.f.fs.mu.Lock()
	defer h.f.fs.mu.Unlock()
	h.f.durable = append([]byte(nil), h.f.cur...)
	h.f.pending = nil
	return nil
}

func (h *memHandle) Truncate(size int64) error {
	h.f.fs.mu.Lock()
	defer h.f.fs.mu.Unlock()
	h.f.apply(memOp{off: size, trunc: true})
	return nil
}

func (h *memHandle) Stat() (os.FileInfo, error) {
	h.f.fs.mu.Lock()
	defer h.f.fs.mu.Unlock()
	return memInfo{name: h.f.name, size: int64(len(h.f.cur))}, nil
}

func (h *memHandle) Close() error {
	if h.closed {
		return errors.New("close of closed file")
	}
	h.closed = true
	return nil
}

type memInfo struct {
	name string
	size int64
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() os.FileMode  { return 0o600 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }

// memBase is a base image in memory.
type memBase []byte

func (b memBase) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (b memBase) Size() int64 { return int64(len(b)) }

func randomBase(rng *rand.Rand, n int) memBase {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.UintN(255) + 1) // never zero: holes must not pass for base data
	}
	return b
}
