package cow

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

const sector = 512

// crashModel tracks, per 512-byte sector of a device, every content a
// power cut may legitimately leave: the content as of the last successful
// Sync, and each version written since.
type crashModel struct {
	history map[int][][]byte
	base    []byte
	cur     []byte   // what reads must return now
	stable  [][]byte // per sector, as of the last successful Sync
	since   [][][]byte
}

func newCrashModel(base []byte) *crashModel {
	m := &crashModel{base: base}
	m.reset(base)
	return m
}

// reset makes contents the durable state.
func (m *crashModel) reset(contents []byte) {
	m.cur = append([]byte(nil), contents...)
	n := (len(contents) + sector - 1) / sector
	m.stable = make([][]byte, n)
	m.since = make([][][]byte, n)
	for s := range n {
		m.stable[s] = m.sector(s)
		if m.history == nil {
			m.history = map[int][][]byte{}
		}
		m.history[s] = append(m.history[s], m.sector(s))
	}
}

func (m *crashModel) sector(s int) []byte {
	return append([]byte(nil), m.cur[s*sector:min((s+1)*sector, len(m.cur))]...)
}

// note records the current contents of the sectors in [off, off+n) as a
// possible post-crash state.
func (m *crashModel) note(off, n int) {
	for s := off / sector; s*sector < off+n; s++ {
		m.since[s] = append(m.since[s], m.sector(s))
		if m.history == nil {
			m.history = map[int][][]byte{}
		}
		m.history[s] = append(m.history[s], m.sector(s))
	}
}

func (m *crashModel) write(off int, p []byte) {
	copy(m.cur[off:], p)
	m.note(off, len(p))
}

// trimmed records that whole chunks [off, off+n) were trimmed: they read as
// the base now, and until the next Sync may also read as their old data or
// as the hole the trim punched.
func (m *crashModel) trimmed(off, n int) {
	zero := make([]byte, n)
	copy(m.cur[off:off+n], zero)
	m.note(off, n)
	copy(m.cur[off:off+n], m.base[off:off+n])
	m.note(off, n)
}

func (m *crashModel) synced() {
	for s := range m.stable {
		m.stable[s] = m.sector(s)
		m.since[s] = nil
	}
}

// check verifies contents read after a crash and reopen.
func (m *crashModel) check(got []byte) error {
	for s := range m.stable {
		g := got[s*sector : min((s+1)*sector, len(got))]
		if bytes.Equal(g, m.stable[s]) {
			continue
		}
		ok := false
		for _, v := range m.since[s] {
			if bytes.Equal(g, v) {
				ok = true
				break
			}
		}
		if !ok {
			desc := "other"
			for i, h := range m.history[s] {
				if bytes.Equal(h, g) {
					desc = fmt.Sprintf("history %d of %d", i, len(m.history[s]))
				}
			}
			switch {
			case bytes.Equal(g, make([]byte, len(g))):
				desc = "zeroes"
			case bytes.Equal(g, m.base[s*sector:s*sector+len(g)]):
				desc = "base"
			}
			return fmt.Errorf("[%s] "+"sector %d (offset %d) holds neither its synced contents nor any of the %d written since",
				desc, s, s*sector, len(m.since[s]))
		}
	}
	return nil
}

// runCrashTest runs rounds of random operations on a layer, each ended by a
// power cut (sometimes right after an injected I/O failure), reopens the
// layer and checks that it opens, that every synced write is there and
// that every other sector holds a version it really had.
func runCrashTest(t *testing.T, seed uint64, rounds int) {
	rng := rand.New(rand.NewPCG(seed, seed*7+1))
	chunk := []int{4096, 1024, 16384}[rng.IntN(3)]
	size := 48*chunk + []int{0, 1536, 512}[rng.IntN(3)]
	base := randomBase(rng, size)
	fsys := newMemFS()
	boot := BootID{1}
	opts := Options{ChunkSize: chunk, FS: fsys, compactMin: int64(64 + rng.IntN(4096)),
		BootID: func() (BootID, error) { return boot, nil }}
	d, err := Create(base, "layer", opts)
	if err != nil {
		t.Fatal(err)
	}
	m := newCrashModel(base)
	for round := range rounds {
		// Maybe make the k-th I/O call of this round fail, as a dying
		// disk would just before the power goes.
		calls, failAt := 0, -1
		if rng.IntN(3) == 0 {
			failAt = rng.IntN(40)
		}
		injected := errors.New("injected I/O error")
		hook := func() error {
			calls++
			if calls == failAt {
				return injected
			}
			return nil
		}
		fsys.failSync = func(string) error { return hook() }
		fsys.failWrite = func(string, int64, int) error { return hook() }

		// After an injected failure the round ends with the power cut:
		// the layer's live state is then only known up to the versions
		// the model noted.
		failed := false
		for op := 0; op < 1+rng.IntN(40) && !failed; op++ {
			switch k := rng.IntN(100); {
			case k < 55:
				off := rng.IntN(size)
				n := 1 + rng.IntN(min(3*chunk, size-off))
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				_, err := d.WriteAt(p, int64(off))
				if err != nil && !errors.Is(err, injected) {
					t.Fatalf("seed %d round %d: WriteAt: %v", seed, round, err)
				}
				m.write(off, p) // even failed, the layer may hold part of it
				failed = err != nil
			case k < 65:
				off := rng.IntN(size)
				n := 1 + rng.IntN(min(4*chunk, size-off))
				first, last, whole := d.wholeChunks(int64(off), int64(n))
				err := d.Trim(int64(off), int64(n))
				if err != nil && !errors.Is(err, injected) {
					t.Fatalf("seed %d round %d: Trim: %v", seed, round, err)
				}
				if whole {
					s, e := int(first)*chunk, int(d.chunkEnd(last))
					m.trimmed(s, e-s)
				}
				failed = err != nil
			case k < 75:
				off := rng.IntN(size)
				n := 1 + rng.IntN(min(4*chunk, size-off))
				err := d.WriteZeroes(int64(off), int64(n), rng.IntN(2) == 0)
				if err != nil && !errors.Is(err, injected) {
					t.Fatalf("seed %d round %d: WriteZeroes: %v", seed, round, err)
				}
				m.write(off, make([]byte, n))
				failed = err != nil
			case k < 92:
				err := d.Sync()
				if err != nil && !errors.Is(err, injected) {
					t.Fatalf("seed %d round %d: Sync: %v", seed, round, err)
				}
				if err == nil {
					m.synced()
				}
				failed = err != nil
			default:
				got := make([]byte, size)
				if _, err := d.ReadAt(got, 0); err != nil {
					t.Fatalf("seed %d round %d: ReadAt: %v", seed, round, err)
				}
				if !bytes.Equal(got, m.cur) {
					t.Fatalf("seed %d round %d: live contents differ from the model at byte %d", seed, round, firstDiff(got, m.cur))
				}
			}
		}
		fsys.failSync, fsys.failWrite = nil, nil
		fsys.crash(rng)
		boot[0]++ // the machine comes back up with a new boot ID
		d, err = Open(base, "layer", opts)
		if err != nil {
			t.Fatalf("seed %d round %d: reopening after a power cut: %v", seed, round, err)
		}
		got := make([]byte, size)
		if _, err := d.ReadAt(got, 0); err != nil {
			t.Fatalf("seed %d round %d: ReadAt after reopen: %v", seed, round, err)
		}
		if err := m.check(got); err != nil {
			t.Fatalf("seed %d round %d (chunk %d): after a power cut: %v", seed, round, chunk, err)
		}
		m.reset(got)
	}
}

// TestProcessCrashKeepsAcknowledgedWrites kills the server process (the
// layer is dropped without Close or Sync, the page cache survives) at
// random points: on reopen every write that returned is there, flushed or
// not, because the kernel client never resends acknowledged writes.
func TestProcessCrashKeepsAcknowledgedWrites(t *testing.T) {
	t.Parallel()
	for seed := range uint64(crashSeeds) {
		rng := rand.New(rand.NewPCG(seed, 77))
		chunk := []int{4096, 1024}[rng.IntN(2)]
		size := 32*chunk + 512
		base := randomBase(rng, size)
		fsys := newMemFS()
		opts := Options{ChunkSize: chunk, FS: fsys, compactMin: 256,
			BootID: func() (BootID, error) { return BootID{7}, nil }}
		d, err := Create(base, "layer", opts)
		if err != nil {
			t.Fatal(err)
		}
		want := append([]byte(nil), base...)
		for round := range 10 {
			for range 1 + rng.IntN(30) {
				off := rng.IntN(size)
				n := 1 + rng.IntN(min(3*chunk, size-off))
				switch k := rng.IntN(10); {
				case k < 7:
					p := make([]byte, n)
					for i := range p {
						p[i] = byte(rng.Uint32())
					}
					if _, err := d.WriteAt(p, int64(off)); err != nil {
						t.Fatal(err)
					}
					copy(want[off:], p)
				case k < 8:
					if err := d.WriteZeroes(int64(off), int64(n), rng.IntN(2) == 0); err != nil {
						t.Fatal(err)
					}
					clear(want[off : off+n])
				case k < 9:
					first, last, whole := d.wholeChunks(int64(off), int64(n))
					if err := d.Trim(int64(off), int64(n)); err != nil {
						t.Fatal(err)
					}
					if whole { // trimmed chunks read as the base from now on
						s, e := int(first)*chunk, int(d.chunkEnd(last))
						copy(want[s:e], base[s:e])
					}
				default:
					if err := d.Sync(); err != nil {
						t.Fatal(err)
					}
				}
			}
			// kill -9: no Close, no Sync.
			d, err = Open(base, "layer", opts)
			if err != nil {
				t.Fatalf("seed %d round %d: reopening after a process crash: %v", seed, round, err)
			}
			got := make([]byte, size)
			if _, err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("seed %d round %d: after a process crash, byte %d differs: an acknowledged write was lost", seed, round, firstDiff(got, want))
			}
		}
	}
}

func TestCrashConsistency(t *testing.T) {
	t.Parallel()
	for seed := range uint64(crashSeeds) {
		runCrashTest(t, seed, 25)
	}
}
