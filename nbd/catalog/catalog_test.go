package catalog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rackboot/rackboot/nbd"
	"github.com/rackboot/rackboot/nbd/cow"
)

// writeImage writes a random image of size bytes and returns its path and
// sha256.
func writeImage(t testing.TB, dir string, size int) (string, [32]byte) {
	t.Helper()
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	path := filepath.Join(dir, "base.img")
	if err := os.WriteFile(path, b, 0o444); err != nil {
		t.Fatal(err)
	}
	return path, sha256.Sum256(b)
}

type fixture struct {
	addr  string
	store *cow.Store
	image string
	sum   [32]byte
}

func newFixture(t testing.TB, size int) *fixture {
	t.Helper()
	dir := t.TempDir()
	path, sum := writeImage(t, dir, size)
	store, err := cow.OpenStore(filepath.Join(dir, "state"), cow.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := New([]Image{{Name: "img", Path: path}}, store)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	cat.Logger = log
	srv := &nbd.Server{Resolver: cat, Logger: log, MaxInFlight: 512}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		cat.Close()
		store.Close()
	})
	return &fixture{addr: ln.Addr().String(), store: store, image: path, sum: sum}
}

func (f *fixture) dial(t testing.TB, export string) *nbd.Client {
	t.Helper()
	c, err := nbd.Dial(t.Context(), f.addr, export)
	if err != nil {
		t.Fatalf("Dial(%q): %v", export, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) checkBase(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(f.image)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(b) != f.sum {
		t.Fatal("the base image changed")
	}
}

// page returns the payload writer w puts in its 4 KiB write: unique per
// writer, so a torn or lost write shows.
func page(w int) []byte {
	p := make([]byte, 4096)
	for i := 0; i < len(p); i += 8 {
		binary.BigEndian.PutUint64(p[i:], uint64(w)<<32|uint64(i))
	}
	return p
}

// TestConcurrentWrites puts 512 4 KiB writes in flight at once into one
// session, then reads every page back. Debian's nbd-server 3.24 in
// copy-on-write mode corrupts this.
func TestConcurrentWrites(t *testing.T) {
	f := newFixture(t, 8<<20)
	write := func(t *testing.T, clients []*nbd.Client, off func(w int) int64) {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range 512 {
			c := clients[w%len(clients)]
			wg.Go(func() {
				<-start
				if _, err := c.WriteAt(page(w), off(w)); err != nil {
					t.Errorf("write %d: %v", w, err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
	// Distinct pages, scattered so that writes share copy-on-write chunks'
	// neighbourhoods and stripes.
	perm := rand.New(rand.NewPCG(3, 4)).Perm(2048)
	distinct := func(w int) int64 { return int64(perm[w]) * 4096 }

	t.Run("one pipelined connection", func(t *testing.T) {
		c := f.dial(t, "img@pipe")
		write(t, []*nbd.Client{c}, distinct)
		checkPages(t, c, distinct)
	})
	t.Run("eight connections", func(t *testing.T) {
		var cs []*nbd.Client
		for range 8 {
			cs = append(cs, f.dial(t, "img@multi"))
		}
		write(t, cs, distinct)
		for _, c := range cs {
			checkPages(t, c, distinct) // multi-conn: every connection sees every write
		}
	})
	t.Run("overlapping halves", func(t *testing.T) {
		// Write w covers the second half of page w-1's range and the
		// first half of its own: each 2 KiB half ends up whole from one
		// of the two writers that raced for it.
		c := f.dial(t, "img@overlap")
		half := func(w int) int64 { return int64(w) * 2048 }
		write(t, []*nbd.Client{c}, half)
		got := make([]byte, 513*2048)
		if _, err := c.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		for h := 0; h < 513; h++ {
			g := got[h*2048 : (h+1)*2048]
			var cands [][]byte
			if h < 512 {
				cands = append(cands, page(h)[:2048]) // writer h, first half
			}
			if h > 0 {
				cands = append(cands, page(h - 1)[2048:]) // writer h-1, second half
			}
			if !bytes.Equal(g, cands[0]) && (len(cands) == 1 || !bytes.Equal(g, cands[1])) {
				t.Fatalf("half page %d holds neither racing writer's data", h)
			}
		}
	})
	f.checkBase(t)
}

func checkPages(t *testing.T, c *nbd.Client, off func(w int) int64) {
	t.Helper()
	got := make([]byte, 4096)
	for w := range 512 {
		if _, err := c.ReadAt(got, off(w)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, page(w)) {
			t.Fatalf("page of write %d at %d reads back wrong", w, off(w))
		}
	}
}

func TestSessionsAreSeparate(t *testing.T) {
	f := newFixture(t, 1<<20)
	a := f.dial(t, "img@a")
	if _, err := a.WriteAt(page(1), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile(f.image)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	for _, name := range []string{"img", "img@b"} {
		c := f.dial(t, name)
		if _, err := c.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, base[:4096]) {
			t.Errorf("%s sees another session's write", name)
		}
	}
	// A reconnect finds the session's writes.
	a.Close()
	a2 := f.dial(t, "img@a")
	if _, err := a2.ReadAt(got, 0); err != nil || !bytes.Equal(got, page(1)) {
		t.Errorf("reconnected session lost its write (err %v)", err)
	}
	f.checkBase(t)
}

func TestDiscardCutsOffClients(t *testing.T) {
	f := newFixture(t, 1<<20)
	c := f.dial(t, "img@gone")
	if _, err := c.WriteAt(page(1), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Discard("img@gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(page(2), 0); err == nil {
		t.Error("write to a discarded session succeeded")
	}
	// The name starts afresh.
	c2 := f.dial(t, "img@gone")
	got := make([]byte, 4096)
	if _, err := c2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, page(1)) || bytes.Equal(got, page(2)) {
		t.Error("a new session with a discarded name sees the old writes")
	}
}

func TestOpenErrors(t *testing.T) {
	f := newFixture(t, 1<<20)
	_ = f
	store, err := cow.OpenStore(t.TempDir(), cow.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cat, err := New([]Image{{Name: "img", Path: f.image}}, store)
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	for _, name := range []string{"nope", "nope@s", "img@", "img@../../etc", "img@a/b", "img@a b"} {
		if _, err := cat.Open(t.Context(), name, netip.AddrPort{}); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open(%q) = %v; want fs.ErrNotExist", name, err)
		}
	}
	if _, err := New([]Image{{Name: "a@b", Path: f.image}}, store); err == nil {
		t.Error("New accepted an image name with '@'")
	}
}
