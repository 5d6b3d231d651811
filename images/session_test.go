package images

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"testing"

	"github.com/rackboot/rackboot/nbd/cow"
)

// TestSessionKeepsVersion activates v2 while a copy-on-write session is
// open over v1, as a board booted before the activation would have it:
// the session keeps reading v1's bytes, and GC keeps v1 as long as the
// session exists, even with no boot recorded.
func TestSessionKeepsVersion(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	c, v1, v2 := twoVersions(t, state)
	want1, err := os.ReadFile(v1.RootPath)
	if err != nil {
		t.Fatal(err)
	}
	want2, err := os.ReadFile(v2.RootPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(want1, want2) {
		t.Fatal("v1 and v2 have the same bytes")
	}

	// The server resolves the active version when the boot starts and
	// opens a session over its root.
	active, err := c.Active("minimal-amd64")
	if err != nil || active.Version != v1.Version {
		t.Fatalf("Active = %s, %v; want %s", active, err, v1)
	}
	img, err := cow.OpenImage(active.RootPath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	store, err := cow.OpenStore(state, cow.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	sess, err := store.Open("board-a@boot1", img, cow.SessionSpec{Owner: "board-a", Image: "minimal-amd64"})
	if err != nil {
		t.Fatal(err)
	}
	readAll := func() []byte {
		t.Helper()
		b := make([]byte, sess.Size())
		if _, err := sess.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The board writes a block; the rest reads through to v1.
	block := bytes.Repeat([]byte{0x5a}, 4096)
	if _, err := sess.WriteAt(block, 1<<20); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(want1)
	copy(want[1<<20:], block)

	if err := c.Activate(v2.Name, v2.Version); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Active("minimal-amd64"); err != nil || v.Version != v2.Version {
		t.Fatalf("Active after activating v2 = %s, %v", v, err)
	}
	// No boot is recorded (inUse says no): the session alone keeps v1.
	deleted, err := c.GC(t.Context(), func(Version) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if len(deleted) > 0 {
		t.Fatalf("GC deleted %v under a live session", names(deleted))
	}
	if !bytes.Equal(readAll(), want) {
		t.Fatal("the session no longer reads v1's bytes (with its own write) after activating v2")
	}
	if got, _ := os.ReadFile(v1.RootPath); !bytes.Equal(got, want1) {
		t.Fatal("v1's root.img changed")
	}

	// The session survives a close (the board reconnects, the server
	// restarts): it still pins v1.
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	if deleted, err := c.GC(t.Context(), nil); err != nil || len(deleted) > 0 {
		t.Fatalf("GC with a closed but stored session = %v, %v; want nothing deleted", names(deleted), err)
	}
	sess, err = store.Open("board-a@boot1", img, cow.SessionSpec{Owner: "board-a", Image: "minimal-amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(), want) {
		t.Fatal("the reopened session doesn't read v1's bytes")
	}
	sess.Close()

	// The board's next boot discards the layer: v1 is free to go.
	if err := store.Discard("board-a@boot1"); err != nil {
		t.Fatal(err)
	}
	deleted, err = c.GC(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(deleted) != 1 || deleted[0].Version != v1.Version {
		t.Fatalf("GC after the discard deleted %v; want %s", names(deleted), v1)
	}
	if _, err := os.Stat(v1.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: %v; want it gone", v1.Dir, err)
	}
}

// TestUsedBySession covers the ways a session names its base.
func TestUsedBySession(t *testing.T) {
	t.Parallel()
	_, v1, v2 := twoVersions(t, t.TempDir())
	img, err := cow.OpenImage(v1.RootPath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	tests := map[string]struct {
		s    cow.SessionInfo
		want bool
	}{
		"by path":           {cow.SessionInfo{BasePath: v1.RootPath}, true},
		"by unclean path":   {cow.SessionInfo{BasePath: v1.Dir + "//./root.img"}, true},
		"by identity":       {cow.SessionInfo{BasePath: "relative/root.img", BaseID: img.Identity()}, true},
		"by image name":     {cow.SessionInfo{Image: v1.String()}, true},
		"other version":     {cow.SessionInfo{BasePath: v2.RootPath, Image: v2.String()}, false},
		"prefix of the dir": {cow.SessionInfo{BasePath: v1.Dir + "x/root.img"}, false},
		"image name only":   {cow.SessionInfo{Image: v1.Name}, false},
		"nothing":           {cow.SessionInfo{}, false},
	}
	for name, tt := range tests {
		if got := usedBySession(v1, []cow.SessionInfo{tt.s}); got != tt.want {
			t.Errorf("%s: usedBySession(%s, %+v) = %v; want %v", name, v1, tt.s, got, tt.want)
		}
	}
}
