package cow

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/rackboot/rackboot/internal/rawio"
)

// DefaultChunkSize is the allocation unit of a write layer: 4 KiB, the
// page and filesystem block size boards write in. A smaller chunk than the
// writes means more metadata; a larger one means read-modify-write of the
// base for every small first write and a write layer that costs a whole
// chunk per scattered 4 KiB write (64 KiB clusters cost ~10x the data
// written for random 4 KiB writes). BenchmarkChunkSize measures both.
const DefaultChunkSize = 4096

// Base is the read-only image under a layer.
type Base interface {
	io.ReaderAt
	Size() int64
}

// Options tune a Device. The zero value is ready to use.
type Options struct {
	// ChunkSize is the allocation unit in bytes, a power of two from 512 to
	// 16 MiB; 0 means DefaultChunkSize. It is fixed when a layer is created
	// and read back from the metadata when it is opened.
	ChunkSize int
	// FS opens the layer's files; nil means the operating system. Tests use
	// it to inject faults and simulate power cuts.
	FS FS

	// BootID returns the kernel's boot ID, which tells a crash of this
	// process (the page cache survives) from a power loss (it doesn't);
	// nil reads /proc/sys/kernel/random/boot_id. Tests simulate reboots
	// with it.
	BootID func() (BootID, error)

	// compactMin overrides the 1 MiB floor of the compaction threshold in
	// tests.
	compactMin int64
}

// ReadBootID reads the running kernel's boot ID.
func ReadBootID() (BootID, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return BootID{}, err
	}
	h, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(b)), "-", ""))
	if err != nil || len(h) != 16 {
		return BootID{}, fmt.Errorf("boot ID %q: not a UUID", b)
	}
	return BootID(h), nil
}

func (o Options) bootID() BootID {
	f := o.BootID
	if f == nil {
		f = ReadBootID
	}
	id, err := f()
	if err != nil {
		// Without it, no intent batches: a crash of the server then
		// loses the writes since the last FLUSH, as a power loss would.
		return BootID{}
	}
	return id
}

// Device is a copy-on-write block device: reads come from the base image
// except for chunks written through the device, which live in the layer's
// sparse data file at their own offsets. Its methods are safe for
// concurrent use. It implements nbd.Device, nbd.Trimmer and nbd.Zeroer.
//
// # Durability
//
// Sync (and so NBD FLUSH and FUA) fsyncs the data file, then appends the
// allocation changes to the metadata log and fsyncs it. After a crash,
// Open finds every write completed before the last successful Sync; a write
// not covered by a Sync reads as either its old or its new contents. A
// failed fsync makes the device fail every later request (the kernel may
// have dropped the dirty pages), as does a failed write of the live map
// (it no longer covers acknowledged writes), and the session should be
// discarded.
type Device struct {
	base       Base
	size       int64
	shift      uint
	compactMin int64
	boot       BootID // zero: unknown, no live map
	fsys       FS
	dir        string
	data       File
	dataReader io.ReaderAt // data, read without the scheduler when it's an OS file

	// life orders requests (read-locked) against Close (write-locked).
	life   sync.RWMutex
	closed bool
	failed atomic.Pointer[error]

	// mu guards the bitmaps.
	mu      sync.RWMutex
	alloc   *bitmap // chunks whose contents live in the data file
	changed *bitmap // chunks whose state changed since the last batch

	// stripes serialise mutations of the same chunk (read-modify-write of a
	// partial first write, trim), locked in ascending order.
	live *live // updated with alloc, under mu; nil without a boot ID

	stripes [stripeCount]sync.Mutex

	gen atomic.Uint64 // completed mutations

	flushMu   sync.Mutex
	syncedGen uint64

	// logMu guards appends to the metadata log.
	logMu  sync.Mutex
	meta   File
	seq    uint64 // last batch written
	logEnd int64
}

const stripeCount = 4096

const (
	dataName = "data"
	mapName  = "map"
)

func chunkShift(size int) (uint, error) {
	if size == 0 {
		size = DefaultChunkSize
	}
	if size < 512 || size > 16<<20 || size&(size-1) != 0 {
		return 0, fmt.Errorf("chunk size %d: not a power of two from 512 to 16 MiB", size)
	}
	return uint(bits.TrailingZeros(uint(size))), nil
}

// Create makes a new, empty layer over base in dir (which must exist) and
// opens it.
func Create(base Base, dir string, opts Options) (*Device, error) {
	shift, err := chunkShift(opts.ChunkSize)
	if err != nil {
		return nil, err
	}
	fsys := opts.FS
	if fsys == nil {
		fsys = OSFS{}
	}
	size := base.Size()
	if size <= 0 {
		return nil, fmt.Errorf("creating layer: base of %d bytes", size)
	}
	data, err := fsys.OpenFile(filepath.Join(dir, dataName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating layer data: %w", err)
	}
	meta, err := fsys.OpenFile(filepath.Join(dir, mapName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		data.Close()
		return nil, fmt.Errorf("creating layer map: %w", err)
	}
	hdr := appendHeader(nil, logHeader{chunkShift: uint32(shift), size: uint64(size)})
	err = errors.Join(data.Truncate(size), data.Sync())
	if err == nil {
		_, err = meta.WriteAt(hdr, 0)
	}
	if err == nil {
		err = errors.Join(meta.Sync(), fsys.SyncDir(dir))
	}
	if err != nil {
		data.Close()
		meta.Close()
		return nil, fmt.Errorf("creating layer: %w", err)
	}
	d := newDevice(base, opts, fsys, dir, shift, data, meta, 0, int64(len(hdr)))
	if _, err := d.openLive(); err != nil {
		data.Close()
		meta.Close()
		return nil, err
	}
	return d, nil
}

// openLive opens the live map. It reports whether it held a newer state
// than the durable log (a crash of the process), which it then made
// current.
func (d *Device) openLive() (bool, error) {
	if d.boot == (BootID{}) {
		// Without a boot ID no live map is kept. One an earlier open in
		// this boot left behind must go: the next open that can read the
		// boot ID would trust it, and miss what this one writes. Emptied
		// through d.fsys (not removed with os.Remove behind its back), and
		// an open that can't do that fails.
		f, err := d.fsys.OpenFile(filepath.Join(d.dir, liveName), os.O_RDWR|os.O_TRUNC, 0)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("invalidating live map: %w", err)
		}
		return false, f.Close()
	}
	l, found, ok, err := openLive(d.fsys, d.dir, d.shift, uint64(d.size+int64(1)<<d.shift-1)>>d.shift, d.boot, d.alloc)
	if err != nil {
		return false, err
	}
	d.live = l
	if !ok {
		return false, nil
	}
	d.alloc = found
	return true, nil
}

func newDevice(base Base, opts Options, fsys FS, dir string, shift uint, data, meta File, seq uint64, logEnd int64) *Device {
	cm := opts.compactMin
	if cm == 0 {
		cm = 1 << 20
	}
	var dataReader io.ReaderAt = data
	if f, ok := data.(osFile); ok { // what OSFS opens
		dataReader = rawio.NewFile(f.File)
	}
	return &Device{
		base: base, size: base.Size(), shift: shift, fsys: fsys, dir: dir, compactMin: cm, boot: opts.bootID(),
		data: data, dataReader: dataReader, meta: meta, seq: seq, logEnd: logEnd,
		alloc: newBitmap(), changed: newBitmap(),
	}
}

// Open opens the layer in dir over base, replaying its metadata. A torn
// last batch (a crash during Sync) is cut off.
func Open(base Base, dir string, opts Options) (*Device, error) {
	fsys := opts.FS
	if fsys == nil {
		fsys = OSFS{}
	}
	meta, err := fsys.OpenFile(filepath.Join(dir, mapName), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening layer map: %w", err)
	}
	d, err := openWithMeta(base, opts, fsys, dir, meta)
	if err != nil {
		meta.Close()
		return nil, err
	}
	crashed, err := d.openLive()
	if err != nil {
		d.data.Close()
		d.meta.Close()
		return nil, err
	}
	// After a crash of the server process the live map holds writes the
	// durable log doesn't: make them durable now, in a compacted log.
	if crashed || d.logEnd > d.compactThreshold(d.alloc.count) {
		if err := d.compact(); err != nil {
			d.closeFiles()
			return nil, err
		}
	}
	return d, nil
}

// closeFiles closes the layer's files.
func (d *Device) closeFiles() error {
	var lerr error
	if d.live != nil {
		lerr = d.live.close()
	}
	return errors.Join(d.data.Close(), d.meta.Close(), lerr)
}

func openWithMeta(base Base, opts Options, fsys FS, dir string, meta File) (*Device, error) {
	fi, err := meta.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening layer map: %w", err)
	}
	buf := make([]byte, fi.Size())
	if _, err := meta.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading layer map: %w", err)
	}
	r, err := parseLog(buf)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", dir, err)
	}
	h := r.header
	if int64(h.size) != base.Size() {
		return nil, fmt.Errorf("layer %s: made for a %d-byte base, base has %d: %w", dir, h.size, base.Size(), ErrCorrupt)
	}
	if int64(r.valid) < fi.Size() {
		// The tail is a batch a crash cut short: drop it so the next
		// batch is appended after the valid prefix.
		if err := errors.Join(meta.Truncate(int64(r.valid)), meta.Sync()); err != nil {
			return nil, fmt.Errorf("truncating torn layer map: %w", err)
		}
	}
	data, err := fsys.OpenFile(filepath.Join(dir, dataName), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening layer data: %w", err)
	}
	if dfi, err := data.Stat(); err != nil || dfi.Size() != int64(h.size) {
		err = errors.Join(err, data.Truncate(int64(h.size)), data.Sync())
		if err != nil {
			data.Close()
			return nil, fmt.Errorf("sizing layer data: %w", err)
		}
	}
	d := newDevice(base, opts, fsys, dir, uint(h.chunkShift), data, meta, r.seq, int64(r.valid))
	for _, run := range r.runs {
		d.alloc.setRange(run.start, uint64(run.n), run.alloc)
	}
	return d, nil
}

// compactThreshold is the log length above which the log is rewritten:
// four times what a fresh log would take, and at least 1 MiB.
func (d *Device) compactThreshold(allocated uint64) int64 {
	return max(d.compactMin, 4*(logHeaderLen+batchHdrLen+4+int64(runLen)*int64(allocated)))
}

// Size returns the device size in bytes, the base image's size.
func (d *Device) Size() int64 { return d.size }

// ChunkSize returns the allocation unit in bytes.
func (d *Device) ChunkSize() int { return 1 << d.shift }

// Allocated returns the number of bytes of the device that live in the
// layer.
func (d *Device) Allocated() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return int64(d.alloc.count) << d.shift
}

func (d *Device) enter() error {
	d.life.RLock()
	if d.closed {
		d.life.RUnlock()
		return fmt.Errorf("copy-on-write layer %s: %w", d.dir, os.ErrClosed)
	}
	if p := d.failed.Load(); p != nil {
		d.life.RUnlock()
		return fmt.Errorf("copy-on-write layer %s failed earlier: %w", d.dir, *p)
	}
	return nil
}

func (d *Device) leave() { d.life.RUnlock() }

func (d *Device) fail(err error) error {
	d.failed.CompareAndSwap(nil, &err)
	return err
}

func (d *Device) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > d.size || n > d.size-off {
		return fmt.Errorf("range %d+%d outside device of %d bytes: %w", off, n, d.size, syscall.EINVAL)
	}
	return nil
}

// chunkEnd returns the end offset of chunk c, shorter for the last chunk
// when the size isn't a multiple of the chunk size.
func (d *Device) chunkEnd(c uint64) int64 {
	return min(int64(c+1)<<d.shift, d.size)
}

// ReadAt reads from the layer where it holds data and from the base
// elsewhere.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if err := d.enter(); err != nil {
		return 0, err
	}
	defer d.leave()
	if off < 0 || off > d.size {
		return 0, fmt.Errorf("read at %d of %d bytes: %w", off, d.size, syscall.EINVAL)
	}
	n := min(int64(len(p)), d.size-off)
	if n == 0 {
		if len(p) > 0 {
			return 0, io.EOF
		}
		return 0, nil
	}
	end := off + n
	last := uint64(end-1) >> d.shift
	for pos := off; pos < end; {
		c := uint64(pos) >> d.shift
		d.mu.RLock()
		k, inLayer := d.alloc.runLength(c, last-c+1)
		d.mu.RUnlock()
		runEnd := min(d.chunkEnd(c+k-1), end)
		var src io.ReaderAt = d.base
		what := "base"
		if inLayer {
			src, what = d.dataReader, "layer"
		}
		if m, err := src.ReadAt(p[pos-off:runEnd-off], pos); err != nil && (m != int(runEnd-pos) || !errors.Is(err, io.EOF)) {
			return int(pos - off), fmt.Errorf("reading %s at %d: %w", what, pos, err)
		}
		pos = runEnd
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// ReadFiles sends [off, off+n) from the files that hold it: the base image
// and the layer's data file (nbd.FileReader). It needs both to be OS
// files; otherwise it returns an error wrapping errors.ErrUnsupported
// before sending anything.
func (d *Device) ReadFiles(off, n int64, send func(f *os.File, off, n int64) error) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.leave()
	base, ok1 := d.base.(interface{ File() *os.File })
	data, ok2 := d.data.(osFile)
	if !ok1 || !ok2 {
		return fmt.Errorf("layer %s: %w", d.dir, errors.ErrUnsupported)
	}
	if err := d.checkRange(off, n); err != nil || n == 0 {
		return err
	}
	end := off + n
	last := uint64(end-1) >> d.shift
	for pos := off; pos < end; {
		c := uint64(pos) >> d.shift
		d.mu.RLock()
		k, inLayer := d.alloc.runLength(c, last-c+1)
		d.mu.RUnlock()
		runEnd := min(d.chunkEnd(c+k-1), end)
		f := base.File()
		if inLayer {
			f = data.File
		}
		if err := send(f, pos, runEnd-pos); err != nil {
			return err
		}
		pos = runEnd
	}
	return nil
}

// lockChunks locks the stripes of chunks [first, last] in ascending order
// and returns the unlock function.
func (d *Device) lockChunks(first, last uint64) func() {
	var set [stripeCount / 64]uint64
	if last-first+1 >= stripeCount {
		for i := range set {
			set[i] = ^uint64(0)
		}
	} else {
		for c := first; c <= last; c++ {
			s := c % stripeCount
			set[s/64] |= 1 << (s % 64)
		}
	}
	for w, word := range set {
		for word != 0 {
			t := bits.TrailingZeros64(word)
			d.stripes[w*64+t].Lock()
			word &= word - 1
		}
	}
	return func() {
		for w, word := range set {
			for word != 0 {
				t := bits.TrailingZeros64(word)
				d.stripes[w*64+t].Unlock()
				word &= word - 1
			}
		}
	}
}

func (d *Device) allocated(c uint64) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.alloc.get(c)
}

// markAllocated records chunks [first, last] as living in the layer (v)
// or not, in memory and in the live map, before the write that made the
// change is acknowledged: a crash of the server process then loses no
// acknowledged write (see live.go).
//
// Only the runs of chunks whose state changes are visited and written to
// the live map: a TRIM of a whole, mostly unwritten device skips the
// absent bitmap leaves, and dirties no live map page it doesn't change.
func (d *Device) markAllocated(first, last uint64, v bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for c := first; c <= last; {
		n, cur := d.alloc.runLength(c, last-c+1)
		if cur != v {
			for i := c; i < c+n; i++ {
				d.alloc.set(i, v)
				d.changed.set(i, true)
			}
			if d.live != nil {
				if err := d.live.update(c, c+n-1, d.alloc); err != nil {
					// The live map now misses state that later requests
					// may not change again (a write to a chunk already in
					// the layer touches no live map), so a crash would
					// lose them after they were acknowledged.
					return d.fail(err)
				}
			}
		}
		c += n
	}
	return nil
}

// appendBatch appends a batch to the log, unsynced.
func (d *Device) appendBatch(runs []run) error {
	d.logMu.Lock()
	defer d.logMu.Unlock()
	b := appendBatch(nil, d.seq+1, runs)
	if _, err := d.meta.WriteAt(b, d.logEnd); err != nil {
		return fmt.Errorf("writing layer map: %w", err)
	}
	d.seq++
	d.logEnd += int64(len(b))
	return nil
}

// WriteAt writes p at off into the layer. The first write to a chunk that
// doesn't cover it whole copies the rest of the chunk from the base.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if err := d.enter(); err != nil {
		return 0, err
	}
	defer d.leave()
	if err := d.checkWrite(off, int64(len(p))); err != nil || len(p) == 0 {
		return 0, err
	}
	end := off + int64(len(p))
	unlock := d.lockChunks(uint64(off)>>d.shift, uint64(end-1)>>d.shift)
	defer unlock()
	if err := d.writeLocked(p, off); err != nil {
		return 0, err
	}
	d.gen.Add(1)
	return len(p), nil
}

func (d *Device) checkWrite(off, n int64) error {
	if off < 0 || n < 0 || off > d.size || n > d.size-off {
		return fmt.Errorf("write %d+%d beyond device of %d bytes: %w", off, n, d.size, syscall.ENOSPC)
	}
	return nil
}

// writeLocked writes p at off; the caller holds the chunks' stripes.
func (d *Device) writeLocked(p []byte, off int64) error {
	end := off + int64(len(p))
	for pos := off; pos < end; {
		c := uint64(pos) >> d.shift
		cStart := int64(c) << d.shift
		segEnd := min(end, d.chunkEnd(c))
		whole := pos == cStart && segEnd == d.chunkEnd(c)
		if whole || d.allocated(c) {
			// Extend over the following chunks that are written whole
			// or already in the layer: one pwrite for the run.
			j, lastC := segEnd, c
			for j < end {
				nc := lastC + 1
				ncEnd := d.chunkEnd(nc)
				if ncEnd > end && !d.allocated(nc) {
					break
				}
				j, lastC = min(end, ncEnd), nc
			}
			if _, err := d.data.WriteAt(p[pos-off:j-off], pos); err != nil {
				return fmt.Errorf("writing layer at %d: %w", pos, err)
			}
			if err := d.markAllocated(c, lastC, true); err != nil {
				return err
			}
			pos = j
			continue
		}
		// First, partial write to the chunk: copy it up from the base.
		n := d.chunkEnd(c) - cStart
		buf := make([]byte, n)
		if m, err := d.base.ReadAt(buf, cStart); err != nil && (m != len(buf) || !errors.Is(err, io.EOF)) {
			return fmt.Errorf("reading base at %d: %w", cStart, err)
		}
		copy(buf[pos-cStart:], p[pos-off:segEnd-off])
		if _, err := d.data.WriteAt(buf, cStart); err != nil {
			return fmt.Errorf("writing layer at %d: %w", cStart, err)
		}
		if err := d.markAllocated(c, c, true); err != nil {
			return err
		}
		pos = segEnd
	}
	return nil
}

// wholeChunks returns the chunks [first, last] that lie entirely inside
// [off, off+n), and ok=false if there are none.
func (d *Device) wholeChunks(off, n int64) (first, last uint64, ok bool) {
	cs := int64(1) << d.shift
	end := off + n
	f := (off + cs - 1) >> d.shift
	var l int64
	if end == d.size {
		l = (end - 1) >> d.shift // the short last chunk counts as whole
	} else {
		l = end>>d.shift - 1
	}
	if n == 0 || l < f {
		return 0, 0, false
	}
	return uint64(f), uint64(l), true
}

// Trim drops the layer's copy of every chunk entirely inside the range,
// giving the space back (the chunks read from the base again). Partial
// chunks are left alone: TRIM is advisory.
func (d *Device) Trim(off, n int64) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.leave()
	if err := d.checkWrite(off, n); err != nil {
		return err
	}
	first, last, ok := d.wholeChunks(off, n)
	if !ok {
		return nil
	}
	unlock := d.lockChunks(first, last)
	defer unlock()
	if err := d.markAllocated(first, last, false); err != nil {
		return err
	}
	start := int64(first) << d.shift
	if err := punchHole(d.data, start, d.chunkEnd(last)-start); err != nil {
		return fmt.Errorf("trimming layer at %d: %w", start, err)
	}
	d.gen.Add(1)
	return nil
}

// WriteZeroes zeroes a range. Whole chunks become holes in the layer
// (punch) or zeroed allocated extents (!punch); partial chunks are written.
func (d *Device) WriteZeroes(off, n int64, punch bool) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.leave()
	if err := d.checkWrite(off, n); err != nil || n == 0 {
		return err
	}
	end := off + n
	unlock := d.lockChunks(uint64(off)>>d.shift, uint64(end-1)>>d.shift)
	defer unlock()
	first, last, ok := d.wholeChunks(off, n)
	zero := func(from, to int64) error {
		buf := make([]byte, min(to-from, 1<<20))
		for from < to {
			k := min(to-from, int64(len(buf)))
			if err := d.writeLocked(buf[:k], from); err != nil {
				return err
			}
			from += k
		}
		return nil
	}
	if !ok {
		if err := zero(off, end); err != nil {
			return err
		}
		d.gen.Add(1)
		return nil
	}
	wStart, wEnd := int64(first)<<d.shift, d.chunkEnd(last)
	if err := zero(off, wStart); err != nil {
		return err
	}
	var err error
	if punch {
		err = punchHole(d.data, wStart, wEnd-wStart)
	} else {
		err = zeroRange(d.data, wStart, wEnd-wStart)
	}
	if err != nil {
		return fmt.Errorf("zeroing layer at %d: %w", wStart, err)
	}
	if err := d.markAllocated(first, last, true); err != nil {
		return err
	}
	if err := zero(wEnd, end); err != nil {
		return err
	}
	d.gen.Add(1)
	return nil
}

// Sync makes every write completed before the call durable. Concurrent
// calls share one fsync where they can.
func (d *Device) Sync() error {
	if err := d.enter(); err != nil {
		return err
	}
	bloated, err := d.sync()
	d.leave()
	if err == nil && bloated {
		d.life.Lock()
		if !d.closed {
			err = d.compact()
		}
		d.life.Unlock()
	}
	return err
}

// sync persists data and then metadata. It reports whether the log has
// grown enough to be compacted.
func (d *Device) sync() (bool, error) {
	want := d.gen.Load()
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	if p := d.failed.Load(); p != nil {
		return false, *p
	}
	if want <= d.syncedGen {
		return false, nil // another Sync covered our writes
	}
	start := d.gen.Load()
	d.mu.Lock()
	runs := runsOf(d.changed, d.alloc)
	changed := d.changed
	d.changed = newBitmap()
	allocated := d.alloc.count
	d.mu.Unlock()
	if err := d.data.Sync(); err != nil {
		return false, d.fail(fmt.Errorf("syncing layer data: %w", err))
	}
	if len(runs) > 0 {
		if err := d.appendBatch(runs); err != nil {
			d.restoreChanged(changed)
			return false, d.fail(err)
		}
		if err := d.meta.Sync(); err != nil {
			d.restoreChanged(changed)
			return false, d.fail(fmt.Errorf("syncing layer map: %w", err))
		}
	}
	d.syncedGen = start
	d.logMu.Lock()
	bloated := d.logEnd > d.compactThreshold(allocated)
	d.logMu.Unlock()
	return bloated, nil
}

func (d *Device) restoreChanged(old *bitmap) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old.setBits(func(i uint64) { d.changed.set(i, true) })
}

// compact rewrites the metadata log as a single durable batch describing
// the current allocation. The caller holds life exclusively (or is Open),
// so no request is in flight.
func (d *Device) compact() error {
	if _, err := d.sync(); err != nil {
		return err
	}
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	// The new log claims every allocated chunk durably: their data must be
	// on disk first, whatever sync found to do (after a crash it finds
	// nothing: the live map's writes came from the previous process).
	if err := d.data.Sync(); err != nil {
		return d.fail(fmt.Errorf("syncing layer data: %w", err))
	}
	d.mu.Lock()
	d.changed = newBitmap()
	b := appendHeader(nil, logHeader{chunkShift: uint32(d.shift), size: uint64(d.size)})
	b = appendBatch(b, 1, runsOf(d.alloc, d.alloc))
	d.mu.Unlock()
	tmp := filepath.Join(d.dir, mapName+".tmp")
	f, err := d.fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("compacting layer map: %w", err)
	}
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = d.fsys.Rename(tmp, filepath.Join(d.dir, mapName))
	}
	if err != nil {
		// The old log is still the map: carry on appending to it.
		f.Close()
		return fmt.Errorf("compacting layer map: %w", err)
	}
	// From here on the name "map" is the new log, so later batches go to
	// it, not to the unlinked old one.
	d.meta.Close()
	d.meta = f
	d.seq = 1
	d.logEnd = int64(len(b))
	if err := d.fsys.SyncDir(d.dir); err != nil {
		// Whether a power cut leaves the new log or the old one under
		// the name is unknown, and batches appended to the new one would
		// be lost with it: no Sync may succeed any more.
		return d.fail(fmt.Errorf("compacting layer map: %w", err))
	}
	return nil
}

// Close syncs the layer and closes its files. Requests after Close fail
// with an error wrapping os.ErrClosed.
func (d *Device) Close() error {
	d.life.Lock()
	defer d.life.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	_, err := d.sync()
	return errors.Join(err, d.closeFiles())
}

// abandon closes the files without syncing, for a layer about to be
// deleted.
func (d *Device) abandon() {
	d.life.Lock()
	defer d.life.Unlock()
	if d.closed {
		return
	}
	d.closed = true
	d.closeFiles()
}
