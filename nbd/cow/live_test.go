package cow

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
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
