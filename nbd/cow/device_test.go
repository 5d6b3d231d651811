package cow

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/rackboot/rackboot/internal/rawio"
)

// newTestDevice creates a layer over a random base in a memFS.
func newTestDevice(t *testing.T, rng *rand.Rand, size, chunk int) (*Device, memBase, *memFS) {
	t.Helper()
	base := randomBase(rng, size)
	fsys := newMemFS()
	d, err := Create(base, "layer", Options{ChunkSize: chunk, FS: fsys})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return d, base, fsys
}

func readAll(t *testing.T, d *Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if n, err := d.ReadAt(b, 0); err != nil || n != len(b) {
		t.Fatalf("ReadAt(all) = %d, %v", n, err)
	}
	return b
}

func TestFreshLayerReadsBase(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	d, base, _ := newTestDevice(t, rng, 40000, 4096) // size not a multiple of the chunk
	if got := readAll(t, d); !bytes.Equal(got, base) {
		t.Fatal("fresh layer doesn't read as its base")
	}
	if d.Allocated() != 0 {
		t.Errorf("Allocated() = %d; want 0", d.Allocated())
	}
	// Reads past the end: short with io.EOF, as io.ReaderAt says.
	p := make([]byte, 100)
	if n, err := d.ReadAt(p, 39950); n != 50 || err != io.EOF {
		t.Errorf("ReadAt at end = %d, %v; want 50, EOF", n, err)
	}
}

func TestWrites(t *testing.T) {
	const size = 10*4096 + 1000 // short last chunk
	tests := map[string]struct {
		writes    [][2]int // offset, length
		allocated int64
	}{
		"whole chunk":              {[][2]int{{4096, 4096}}, 4096},
		"partial chunk":            {[][2]int{{4100, 10}}, 4096},
		"two partial in one chunk": {[][2]int{{4100, 10}, {8000, 100}}, 4096},
		"spanning unaligned":       {[][2]int{{3000, 10000}}, 4 * 4096},
		"short last chunk whole":   {[][2]int{{10 * 4096, 1000}}, 4096},
		"short last chunk partial": {[][2]int{{10*4096 + 10, 20}}, 4096},
		"everything":               {[][2]int{{0, size}}, 11 * 4096},
		"overwrite":                {[][2]int{{0, 8192}, {100, 8000}, {4095, 2}}, 2 * 4096},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			d, base, _ := newTestDevice(t, rng, size, 4096)
			want := append([]byte(nil), base...)
			for _, w := range tt.writes {
				p := make([]byte, w[1])
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				if n, err := d.WriteAt(p, int64(w[0])); err != nil || n != len(p) {
					t.Fatalf("WriteAt(%d, %d) = %d, %v", w[0], w[1], n, err)
				}
				copy(want[w[0]:], p)
			}
			if got := readAll(t, d); !bytes.Equal(got, want) {
				t.Errorf("contents differ from the model at byte %d", firstDiff(got, want))
			}
			if d.Allocated() != tt.allocated {
				t.Errorf("Allocated() = %d; want %d", d.Allocated(), tt.allocated)
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestOutOfRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	d, _, _ := newTestDevice(t, rng, 8192, 4096)
	if _, err := d.WriteAt(make([]byte, 10), 8190); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("WriteAt beyond end: %v; want ENOSPC", err)
	}
	if err := d.Trim(0, 9000); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Trim beyond end: %v; want ENOSPC", err)
	}
	if err := d.WriteZeroes(-1, 10, true); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("WriteZeroes before start: %v; want ENOSPC", err)
	}
	if _, err := d.ReadAt(make([]byte, 1), 9000); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("ReadAt beyond end: %v; want EINVAL", err)
	}
}

func TestTrimGivesSpaceBack(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	d, base, _ := newTestDevice(t, rng, 16*4096, 4096)
	if _, err := d.WriteAt(bytes.Repeat([]byte{0xaa}, 8*4096), 0); err != nil {
		t.Fatal(err)
	}
	// Whole chunks 1..3 go back to the base; the partial chunks 0 and 4 stay.
	if err := d.Trim(100, 4*4096); err != nil {
		t.Fatal(err)
	}
	if got, want := d.Allocated(), int64(5*4096); got != want {
		t.Errorf("Allocated() after trim = %d; want %d", got, want)
	}
	got := readAll(t, d)
	if !bytes.Equal(got[4096:4*4096], base[4096:4*4096]) {
		t.Error("trimmed chunks don't read from the base")
	}
	if !bytes.Equal(got[:4096], bytes.Repeat([]byte{0xaa}, 4096)) || got[4*4096] != 0xaa {
		t.Error("partially trimmed chunks lost their data")
	}
}

func TestWriteZeroes(t *testing.T) {
	for _, punch := range []bool{true, false} {
		t.Run(fmt.Sprint("punch=", punch), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(9, 10))
			d, base, _ := newTestDevice(t, rng, 8*4096+512, 4096)
			if err := d.WriteZeroes(1000, 3*4096, punch); err != nil {
				t.Fatal(err)
			}
			if err := d.WriteZeroes(8*4096, 512, punch); err != nil { // the short last chunk, whole
				t.Fatal(err)
			}
			want := append([]byte(nil), base...)
			clear(want[1000 : 1000+3*4096])
			clear(want[8*4096:])
			if got := readAll(t, d); !bytes.Equal(got, want) {
				t.Errorf("contents differ from the model at byte %d", firstDiff(got, want))
			}
		})
	}
}

func TestReopenKeepsSyncedWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	d, base, fsys := newTestDevice(t, rng, 64*4096, 4096)
	want := append([]byte(nil), base...)
	for range 50 {
		off, n := rng.IntN(60*4096), 1+rng.IntN(3*4096)
		p := bytes.Repeat([]byte{byte(rng.Uint32())}, n)
		if _, err := d.WriteAt(p, int64(off)); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := d.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("ReadAt after Close: %v; want os.ErrClosed", err)
	}
	d2, err := Open(base, "layer", Options{FS: fsys})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if got := readAll(t, d2); !bytes.Equal(got, want) {
		t.Errorf("reopened contents differ at byte %d", firstDiff(got, want))
	}
	if d2.Allocated() != d.Allocated() {
		t.Errorf("reopened Allocated() = %d; want %d", d2.Allocated(), d.Allocated())
	}
}

func TestOpenRejectsOtherBase(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	d, _, fsys := newTestDevice(t, rng, 8192, 4096)
	d.Close()
	if _, err := Open(randomBase(rng, 4096), "layer", Options{FS: fsys}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Open over a base of another size: %v; want ErrCorrupt", err)
	}
}

func TestCompaction(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	base := randomBase(rng, 256*4096)
	fsys := newMemFS()
	opts := Options{FS: fsys, compactMin: 4096}
	d, err := Create(base, "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), base...)
	for i := range 400 {
		off := rng.IntN(255 * 4096)
		p := bytes.Repeat([]byte{byte(i)}, 1+rng.IntN(4096))
		if _, err := d.WriteAt(p, int64(off)); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
		if i%7 == 0 {
			c := rng.IntN(255)
			if err := d.Trim(int64(c)*4096, 4096); err != nil {
				t.Fatal(err)
			}
			copy(want[c*4096:], base[c*4096:(c+1)*4096])
		}
		if err := d.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	mapSize := int64(len(fsys.files["layer/map"].cur))
	if limit := d.compactThreshold(d.alloc.count); mapSize > limit {
		t.Errorf("map is %d bytes after 400 syncs; compaction should keep it under %d", mapSize, limit)
	}
	if d.seq >= 400 {
		t.Errorf("log sequence %d: never compacted", d.seq)
	}
	if got := readAll(t, d); !bytes.Equal(got, want) {
		t.Fatalf("contents differ at byte %d", firstDiff(got, want))
	}
	d.Close()
	d2, err := Open(base, "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, d2); !bytes.Equal(got, want) {
		t.Errorf("reopened contents differ at byte %d", firstDiff(got, want))
	}
}

func TestFailedSyncFailsDevice(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	d, _, fsys := newTestDevice(t, rng, 8*4096, 4096)
	if _, err := d.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	eio := &os.PathError{Op: "fdatasync", Path: "layer/data", Err: syscall.EIO}
	fsys.failSync = func(string) error { return eio }
	if err := d.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync with failing fsync: %v; want EIO", err)
	}
	fsys.failSync = nil
	// The kernel may have dropped the dirty pages: never claim durability
	// again, and refuse further I/O.
	if err := d.Sync(); !errors.Is(err, syscall.EIO) {
		t.Errorf("Sync after a failed fsync: %v; want the EIO again", err)
	}
	if _, err := d.WriteAt([]byte("y"), 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("WriteAt after a failed fsync: %v; want EIO", err)
	}
}

// TestConcurrentPartialWrites checks that first writes to disjoint parts of
// one chunk, racing each other, all survive the copy-up from the base.
func TestConcurrentPartialWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 20))
	d, base, _ := newTestDevice(t, rng, 64*4096, 4096)
	want := append([]byte(nil), base...)
	var wg sync.WaitGroup
	for c := range 64 {
		for s := range 8 { // 8 sectors per chunk, each its own writer
			off := c*4096 + s*512
			p := bytes.Repeat([]byte{byte(c*8 + s + 1)}, 512)
			copy(want[off:], p)
			wg.Go(func() {
				if _, err := d.WriteAt(p, int64(off)); err != nil {
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	if got := readAll(t, d); !bytes.Equal(got, want) {
		t.Errorf("lost a racing partial write at byte %d", firstDiff(got, want))
	}
}

// TestRandomWritesCostWhatTheyWrite checks on a real filesystem that
// scattered 4 KiB writes cost about their own size in the layer.
func TestRandomWritesCostWhatTheyWrite(t *testing.T) {
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base.img")
	const size = 256 << 20
	if err := os.WriteFile(basePath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(basePath, size); err != nil {
		t.Fatal(err)
	}
	img, err := OpenImage(basePath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	layerDir := filepath.Join(dir, "layer")
	os.Mkdir(layerDir, 0o700)
	d, err := Create(img, layerDir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(21, 22))
	const written = 8 << 20
	page := bytes.Repeat([]byte{0x5a}, 4096)
	for _, p := range rng.Perm(size / 4096)[:written/4096] {
		if _, err := d.WriteAt(page, int64(p)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	used := diskUsage(layerDir)
	t.Logf("%d MiB of random 4 KiB writes cost %.2f MiB on disk", written>>20, float64(used)/(1<<20))
	if used < written || used > written*102/100 {
		t.Errorf("layer uses %d bytes for %d bytes written; want within 2%%", used, written)
	}
}

func TestTrimPunchesHoles(t *testing.T) {
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base.img")
	if err := os.WriteFile(basePath, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := OpenImage(basePath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	d, err := Create(img, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt(bytes.Repeat([]byte{1}, 2<<20), 0); err != nil {
		t.Fatal(err)
	}
	d.Sync()
	before := fileBlocks(t, filepath.Join(dir, dataName))
	if err := d.Trim(0, 2<<20); err != nil {
		t.Fatal(err)
	}
	after := fileBlocks(t, filepath.Join(dir, dataName))
	if before < 2<<20 || after != 0 {
		t.Errorf("data file holds %d bytes before trim and %d after; want >= 2 MiB then 0", before, after)
	}
}

func fileBlocks(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// TestProcessCrashOSFiles is the process-crash case on the real
// filesystem, where the live map is a shared mapping: a layer dropped
// without Close or Sync (as by kill -9) reopens with every acknowledged
// write, and then makes them durable.
func TestProcessCrashOSFiles(t *testing.T) {
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base.img")
	rng := rand.New(rand.NewPCG(31, 32))
	base := randomBase(rng, 4<<20)
	if err := os.WriteFile(basePath, base, 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := OpenImage(basePath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	layer := filepath.Join(dir, "layer")
	os.Mkdir(layer, 0o700)
	d, err := Create(img, layer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), base...)
	for range 200 {
		off := rng.IntN(len(base) - 5000)
		p := bytes.Repeat([]byte{byte(rng.Uint32())}, 1+rng.IntN(5000))
		if _, err := d.WriteAt(p, int64(off)); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	// kill -9: d is dropped as it is.
	d2, err := Open(img, layer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got := readAll(t, d2); !bytes.Equal(got, want) {
		t.Fatalf("after a process crash, byte %d differs: an acknowledged write was lost", firstDiff(got, want))
	}
	if d2.logEnd <= logHeaderLen {
		t.Error("the recovered writes weren't made durable in the map log")
	}
}

// dirSyncFailFS is a memFS whose next SyncDir fails once armed.
type dirSyncFailFS struct {
	*memFS
	armed bool
	err   error
}

func (f *dirSyncFailFS) SyncDir(dir string) error {
	if f.armed {
		f.armed = false
		return f.err
	}
	return f.memFS.SyncDir(dir)
}

// TestFailedDirSyncInCompactionFailsDevice fails the directory fsync that
// follows the rename of a compacted map log over the old one. Which of the
// two a power cut leaves is then unknown, so the device must fail: no
// later FLUSH may succeed (before, they appended to the unlinked old log
// and were lost), and what was flushed before is still there after a
// power cut.
func TestFailedDirSyncInCompactionFailsDevice(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(45, 46))
	base := randomBase(rng, 64*4096)
	eio := &os.PathError{Op: "fsync", Path: "layer", Err: syscall.EIO}
	fsys := &dirSyncFailFS{memFS: newMemFS(), err: eio}
	boot := BootID{1}
	opts := Options{FS: fsys, compactMin: 64, BootID: func() (BootID, error) { return boot, nil }}
	d, err := Create(base, "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), base...)
	fsys.armed = true
	for i := 0; fsys.armed; i++ {
		if i == 100 {
			t.Fatal("100 syncs and no compaction")
		}
		// Each Sync appends a batch: chunk 0 alternately written and
		// trimmed.
		if i%2 == 0 {
			p := bytes.Repeat([]byte{byte(i)}, 4096)
			if _, err := d.WriteAt(p, 0); err != nil {
				t.Fatal(err)
			}
			copy(want, p)
		} else {
			if err := d.Trim(0, 4096); err != nil {
				t.Fatal(err)
			}
			copy(want, base[:4096])
		}
		err := d.Sync()
		if fsys.armed && err != nil {
			t.Fatalf("Sync %d: %v", i, err)
		}
		if !fsys.armed && !errors.Is(err, syscall.EIO) {
			t.Fatalf("Sync whose compaction's directory fsync failed: %v; want EIO", err)
		}
	}
	later := []byte("later")
	_, werr := d.WriteAt(later, 63*4096)
	if !errors.Is(werr, syscall.EIO) {
		t.Errorf("WriteAt after a failed directory fsync: %v; want EIO", werr)
	}
	serr := d.Sync()
	if !errors.Is(serr, syscall.EIO) {
		t.Errorf("Sync after a failed directory fsync: %v; want EIO", serr)
	}
	if werr == nil && serr == nil {
		copy(want[63*4096:], later) // claimed durable: the power cut must keep it
	}
	if err := d.Close(); !errors.Is(err, syscall.EIO) {
		t.Errorf("Close after a failed directory fsync: %v; want EIO", err)
	}
	fsys.crash(rng)
	boot[0]++
	d, err = Open(base, "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := readAll(t, d); !bytes.Equal(got, want) {
		t.Errorf("after a power cut, byte %d differs: a flushed write was lost", firstDiff(got, want))
	}
}

// TestLayerReadsUseRawIO checks that a layer on the real filesystem reads
// its data file through rawio, which skips the scheduler on page cache
// hits like the base image does, and that those reads return the layer's
// data.
func TestLayerReadsUseRawIO(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d, err := Create(zeroBase(1<<20), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.dataReader.(*rawio.File); !ok {
		t.Errorf("layer data read through %T; want *rawio.File", d.dataReader)
	}
	p := bytes.Repeat([]byte{7}, 8192)
	if _, err := d.WriteAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, p) {
		t.Errorf("ReadAt of written chunks = %v, equal: %v", err, bytes.Equal(got, p))
	}
}
