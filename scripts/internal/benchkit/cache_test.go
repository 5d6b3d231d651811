package benchkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// dropCache writes the file's pages back and asks the kernel to drop them
// from the page cache, as a reclaim would.
func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

func TestHoldInCache(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		t.Skip("the temporary directory is on tmpfs, whose pages can't be dropped")
	}
	held := filepath.Join(dir, "held")
	loose := filepath.Join(dir, "loose")
	for _, p := range []string{held, loose} {
		if err := CreateRandomFile(context.Background(), p, 8<<20, 0o444, "file"); err != nil {
			t.Fatal(err)
		}
	}
	// The control: a file nobody holds loses its pages.
	dropCache(t, loose)
	if r, err := residentFile(loose); err != nil || r > 0.5 {
		t.Fatalf("unheld file after a drop: %.2f resident, err %v; want most pages gone", r, err)
	}

	dropCache(t, held)
	h, err := HoldInCache(held)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOMEM) {
		t.Skipf("can't lock 8 MiB here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	// Holding read the dropped file back in, and a drop can't evict it.
	dropCache(t, held)
	if r, err := h.Resident(); err != nil || r != 1 {
		t.Fatalf("held file after a drop: %.2f resident, err %v; want 1", r, err)
	}
	if r, err := residentFile(held); err != nil || r != 1 {
		t.Fatalf("residentFile of the held file: %.2f, err %v; want 1", r, err)
	}
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
	if err := h.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	dropCache(t, held)
	if r, err := residentFile(held); err != nil || r > 0.5 {
		t.Fatalf("released file after a drop: %.2f resident, err %v; want most pages gone", r, err)
	}
}

func TestHoldInCacheMissing(t *testing.T) {
	if _, err := HoldInCache(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("HoldInCache of a missing file: %v, want ErrNotExist", err)
	}
}

// residentFile returns the share of the file's pages in the page cache.
func residentFile(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Size() == 0 {
		return 1, nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("mapping %s: %w", path, err)
	}
	defer unix.Munmap(mem)
	return resident(mem)
}
