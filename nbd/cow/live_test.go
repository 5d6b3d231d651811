package cow

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKilledLiveMapRebuildKeepsFlushedWrites kills the process (modelled
// by failing a write to the live map, after which nothing more is written)
// at each write of the first open after a reboot, which rebuilds the live
// map from the durable log. The next open in the same boot must not trust
// a half-rebuilt live map: every flushed write is still there, then and
// after a further reboot.
func TestKilledLiveMapRebuildKeepsFlushedWrites(t *testing.T) {
	t.Parallel()
	const chunk = 512
	rng := rand.New(rand.NewPCG(41, 42))
	base := randomBase(rng, 3*leafBits*chunk) // three bitmap leaves
	fsys := newMemFS()
	boot := BootID{1}
	opts := Options{ChunkSize: chunk, FS: fsys, BootID: func() (BootID, error) { return boot, nil }}
	d, err := Create(base, "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), base...)
	p := bytes.Repeat([]byte{0xAB}, chunk)
	for _, c := range []int{0, 1, 9, leafBits + 7, 2*leafBits + 100, 3*leafBits - 1} {
		if _, err := d.WriteAt(p, int64(c)*chunk); err != nil {
			t.Fatal(err)
		}
		copy(want[c*chunk:], p)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	killed := errors.New("killed")
	for k := 1; ; k++ {
		boot[0]++ // a reboot: the live map is stale and gets rebuilt
		writes := 0
		fsys.failWrite = func(name string, off int64, n int) error {
			if name == "layer/live" {
				if writes++; writes == k {
					return killed
				}
			}
			return nil
		}
		d, err := Open(base, "layer", opts)
		fsys.failWrite = nil
		if err == nil {
			d.Close()
			if k == 1 {
				t.Fatal("the live map rebuild wrote nothing")
			}
			break // k-1 writes: every kill point was tried
		}
		if !errors.Is(err, killed) {
			t.Fatalf("Open killed at live map write %d: %v", k, err)
		}
		// Restart in the same boot, then once more after a reboot (by
		// then the first reopen has compacted the map from what it found).
		for _, reboot := range []bool{false, true} {
			if reboot {
				boot[0]++
			}
			d, err := Open(base, "layer", opts)
			if err != nil {
				t.Fatalf("reopening after a kill at live map write %d: %v", k, err)
			}
			if got := readAll(t, d); !bytes.Equal(got, want) {
				t.Fatalf("after a kill at live map write %d (reboot since: %v): byte %d differs: a flushed write was lost",
					k, reboot, firstDiff(got, want))
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestOpenWithoutBootIDInvalidatesLiveMap opens a layer once without a
// boot ID (no live map kept) between two opens that have one, in the same
// boot. The live map the first open left must not be trusted by the third:
// it misses what the second wrote and flushed.
func TestOpenWithoutBootIDInvalidatesLiveMap(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(43, 44))
	base := randomBase(rng, 16*4096)
	fsys := newMemFS()
	known := Options{FS: fsys, BootID: func() (BootID, error) { return BootID{9}, nil }}
	unknown := Options{FS: fsys, BootID: func() (BootID, error) { return BootID{}, errors.New("no /proc") }}
	want := append([]byte(nil), base...)
	for i, opts := range []Options{known, unknown} {
		var d *Device
		var err error
		if i == 0 {
			d, err = Create(base, "layer", opts)
		} else {
			d, err = Open(base, "layer", opts)
		}
		if err != nil {
			t.Fatal(err)
		}
		p := bytes.Repeat([]byte{byte(i + 1)}, 4096)
		if _, err := d.WriteAt(p, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
		copy(want[i*4096:], p)
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Open(base, "layer", known)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := readAll(t, d); !bytes.Equal(got, want) {
		t.Fatalf("byte %d differs: a stale live map hid a flushed write", firstDiff(got, want))
	}
}

// zeroBase is a base image of zeroes, as large as wanted for nothing.
type zeroBase int64

func (z zeroBase) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

func (z zeroBase) Size() int64 { return int64(z) }

// fullFSEnv names, in the child process of TestFullFilesystemFailsCleanly,
// the directory to mount a small tmpfs on.
const fullFSEnv = "RACKBOOT_COW_FULLFS_DIR"

// TestFullFilesystemFailsCleanly runs layers on a tmpfs that fills up. The
// live map is a shared mapping: a store to a page the filesystem has no
// space for raises SIGBUS, which kills the whole process. Every request
// must instead fail cleanly or succeed, and a layer whose live map doesn't
// fit must fail to open. The layers run in a child process (in user and
// mount namespaces of its own, to mount the tmpfs), whose death would be
// the failure.
func TestFullFilesystemFailsCleanly(t *testing.T) {
	if dir := os.Getenv(fullFSEnv); dir != "" {
		fullFilesystemChild(t, dir)
		return
	}
	if testing.Short() {
		t.Skip("runs a child process")
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFullFilesystemFailsCleanly$", "-test.v")
	cmd.Env = append(os.Environ(), fullFSEnv+"="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Skipf("no user and mount namespaces for the child: %v", err)
	}
	if m := regexp.MustCompile(`--- SKIP.*\n.*`).Find(out); m != nil {
		t.Skipf("child: %s", m)
	}
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestFullFilesystemFailsCleanly")) {
		t.Fatalf("child: %v\n%s", err, out[:min(len(out), 2000)]) // not the whole goroutine dump
	}
}

func fullFilesystemChild(t *testing.T, dir string) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Skipf("making mounts private: %v", err)
	}
	if err := unix.Mount("rbcowfull", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mounting a tmpfs: %v", err)
	}
	opts := Options{BootID: func() (BootID, error) { return BootID{1}, nil }}
	layer := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// An 8 GiB device: its live map takes 260 KiB.
	const size = 8 << 30
	d, err := Create(zeroBase(size), layer("a"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.live.bits == nil {
		t.Fatal("live map on tmpfs not mapped: this test is about stores to the mapping")
	}
	if _, err := d.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	// A 64 GiB device's live map (2 MiB) doesn't fit in the tmpfs.
	if d, err := Create(zeroBase(64<<30), layer("b"), opts); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Create with a live map larger than the filesystem: %v; want ENOSPC", err)
		if err == nil {
			d.Close()
		}
	}

	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1 << 20, 4096} {
		for {
			if _, err := filler.Write(make([]byte, n)); err != nil {
				break
			}
		}
	}

	if _, err := d.WriteAt(make([]byte, 4096), 1<<30); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("WriteAt on a full filesystem: %v; want ENOSPC", err)
	}
	// Neither needs data blocks, both change live map pages nothing has
	// touched yet.
	if err := d.WriteZeroes(4<<30, 16<<20, true); err != nil {
		t.Errorf("WriteZeroes(punch) on a full filesystem: %v", err)
	}
	if err := d.Trim(0, size); err != nil {
		t.Errorf("Trim on a full filesystem: %v", err)
	}
}

// TestTrimWritesOnlyChangedLiveMapBytes trims a whole device that holds a
// single written chunk: the live map update must write the one byte that
// changes, not a byte per 8 chunks of the range (on a 1 TiB device that
// was 32 MiB of dirtied pages and over a second with the bitmaps locked).
func TestTrimWritesOnlyChangedLiveMapBytes(t *testing.T) {
	t.Parallel()
	const chunk, size = 512, 16 << 20
	fsys := newMemFS()
	opts := Options{ChunkSize: chunk, FS: fsys, BootID: func() (BootID, error) { return BootID{1}, nil }}
	d, err := Create(zeroBase(size), "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt(make([]byte, chunk), 5*chunk); err != nil {
		t.Fatal(err)
	}
	written := 0
	fsys.failWrite = func(name string, off int64, n int) error {
		if name == "layer/live" {
			written += n
		}
		return nil
	}
	if err := d.Trim(0, size); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteZeroes(0, 64*chunk, true); err != nil {
		t.Fatal(err)
	}
	fsys.failWrite = nil
	if want := 1 + 64/8; written != want {
		t.Errorf("trimming a device with one chunk in the layer, then zeroing 64 chunks, wrote %d bytes of live map; want %d", written, want)
	}
	if got := d.Allocated(); got != 64*chunk {
		t.Errorf("Allocated() = %d; want %d", got, 64*chunk)
	}
}

// TestFailedLiveMapWriteFailsDevice fails the live map update of a first,
// partial write to a chunk. The chunk is in the layer now, in memory but
// not in the live map, so a later write to it changes no allocation and
// touches no live map: were it acknowledged, a crash of the process would
// lose it. The device must fail instead.
func TestFailedLiveMapWriteFailsDevice(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(47, 48))
	base := randomBase(rng, 16*4096)
	fsys := newMemFS()
	opts := Options{FS: fsys, BootID: func() (BootID, error) { return BootID{1}, nil }}
	d, err := Create(base, "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	eio := &os.PathError{Op: "write", Path: "layer/live", Err: syscall.EIO}
	fsys.failWrite = func(name string, off int64, n int) error {
		if name == "layer/live" {
			return eio
		}
		return nil
	}
	if _, err := d.WriteAt([]byte("first"), 3*4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("WriteAt with a failing live map: %v; want EIO", err)
	}
	fsys.failWrite = nil
	want := append([]byte(nil), base...)
	if _, err := d.WriteAt([]byte("second"), 3*4096); err == nil {
		// Acknowledged (and covering the failed write): it must survive
		// a crash.
		copy(want[3*4096:], "second")
	} else if !errors.Is(err, syscall.EIO) {
		t.Fatalf("WriteAt after a failed live map write: %v; want EIO", err)
	}
	// kill -9, restart in the same boot.
	d, err = Open(base, "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := readAll(t, d); !bytes.Equal(got, want) {
		t.Errorf("after a process crash, byte %d differs: an acknowledged write was lost", firstDiff(got, want))
	}
}
