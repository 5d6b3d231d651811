package pack

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

var time1 = mustTime()

func tree(t *testing.T) (Spec, string) {
	t.Helper()
	d := t.TempDir()
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(filepath.Join(d, p)), 0o755)
		if err := os.WriteFile(filepath.Join(d, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("init", "#!/bin/init")
	write("busybox", "bb")
	write("mods/lib/modules/6.1/kernel/drivers/block/nbd.ko", "nbd")
	write("mods/lib/modules/6.1/modules.dep", "kernel/drivers/block/nbd.ko:\n")
	return Spec{
		Init: filepath.Join(d, "init"), Files: []Pair{{"bin/busybox", filepath.Join(d, "busybox")}},
		Symlinks: []Pair{{"bin/sh", "busybox"}}, Modules: filepath.Join(d, "mods"),
	}, d
}

// Two builds of the same inputs are byte-identical, even after the inputs'
// times change.
func TestReproducible(t *testing.T) {
	sp, d := tree(t)
	a := filepath.Join(t.TempDir(), "a.cpio.gz")
	b := filepath.Join(t.TempDir(), "b.cpio.gz")
	if _, err := Write(a, sp); err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(d, func(p string, _ os.DirEntry, _ error) error {
		os.Chtimes(p, time1, time1)
		return nil
	})
	res, err := Write(b, sp)
	if err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Fatalf("two builds differ (%d and %d bytes)", len(ab), len(bb))
	}
	if res.Modules != 1 || res.Base+res.ModulesSize != int64(len(bb)) {
		t.Errorf("Write = %+v for %d bytes", res, len(bb))
	}

	// The base archive lists what the init needs, in order.
	zr, err := gzip.NewReader(bytes.NewReader(bb))
	if err != nil {
		t.Fatal(err)
	}
	zr.Multistream(false)
	raw, _ := io.ReadAll(zr)
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
		if r.MTime != 0 || r.UID != 0 {
			t.Errorf("%s: mtime %d uid %d", r.Name, r.MTime, r.UID)
		}
	}
	want := []string{"bin", "bin/busybox", "bin/sh", "dev", "dev/console", "etc", "init", "newroot", "proc", "run", "sys", "tmp"}
	if len(names) != len(want) {
		t.Fatalf("base records %q; want %q", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("base records %q; want %q", names, want)
		}
	}
}

func mustTime() (t time.Time) { return time.Unix(1e9, 0) }
