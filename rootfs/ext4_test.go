package rootfs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/testenv"
	"golang.org/x/sys/unix"
)

// testTree writes the same tree in a given order, with the awkward kinds
// of entries a root has: hard links, symlinks, a sparse file, names with
// spaces and quotes, xattrs, and (as root) device nodes and other owners.
func testTree(t *testing.T, reverse bool) string {
	t.Helper()
	tree := t.TempDir()
	steps := []func(){
		func() { writeTestFile(t, filepath.Join(tree, "etc/hostname"), "placeholder\n", 0o644) },
		func() { writeTestFile(t, filepath.Join(tree, "etc/machine-id"), "", 0o444) },
		func() { writeTestFile(t, filepath.Join(tree, `usr/share/a "quoted" name`), "q", 0o644) },
		func() { writeTestFile(t, filepath.Join(tree, "usr/share/with space"), "s", 0o644) },
		func() {
			writeTestFile(t, filepath.Join(tree, "usr/bin/tool"), "#!/bin/sh\n", 0o755)
			os.Link(filepath.Join(tree, "usr/bin/tool"), filepath.Join(tree, "usr/bin/tool-link"))
		},
		func() {
			os.MkdirAll(filepath.Join(tree, "lib"), 0o755)
			os.Symlink("../usr/bin", filepath.Join(tree, "lib/bin"))
		},
		func() {
			f, _ := os.Create(filepath.Join(tree, "var/sparse"))
			f.Truncate(5 << 20)
			f.WriteAt([]byte("middle"), 2<<20)
			f.Close()
		},
		func() { os.MkdirAll(filepath.Join(tree, "build"), 0o755) },
		func() {
			for i := range 300 { // a directory big enough for an htree index
				writeTestFile(t, filepath.Join(tree, "usr/share/many", strings.Repeat("x", i%7)+string(rune('a'+i%26))+strings.Repeat("y", i/26)), "", 0o644)
			}
		},
	}
	if reverse {
		slices.Reverse(steps)
	}
	for _, s := range steps {
		s()
		time.Sleep(time.Millisecond) // different sub-second times
	}
	unix.Setxattr(filepath.Join(tree, "usr/bin/tool"), "user.rackboot", []byte("v"), 0)
	if os.Geteuid() == 0 {
		unix.Setxattr(filepath.Join(tree, "usr/bin/tool"), "security.capability", []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0)
		os.MkdirAll(filepath.Join(tree, "dev"), 0o755)
		unix.Mknod(filepath.Join(tree, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
		unix.Mkfifo(filepath.Join(tree, "dev/fifo"), 0o600)
		os.Lchown(filepath.Join(tree, "etc/hostname"), 100, 101)
	}
	// Times as a build leaves them: some old, most now.
	os.Chtimes(filepath.Join(tree, "usr/bin/tool"), time.Time{}, time.Unix(1600000000, 0))
	if err := ClampTimes(tree, time.Unix(1735689600, 0)); err != nil {
		t.Fatal(err)
	}
	return tree
}

// TestExt4Reproducible makes images of two equal trees created in
// opposite orders at different times, and wants the same bytes, a clean
// e2fsck, and every inode's times equal to its modification time.
func TestExt4Reproducible(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"mke2fs", "debugfs", "e2fsck"} {
		testenv.LookPath(t, tool)
	}
	e := Ext4{Label: "test", UUID: deriveUUID("h", "amd64", "uuid"), HashSeed: deriveUUID("h", "amd64", "hash_seed"), Size: 64 << 20, Epoch: 1735689600}
	var imgs [2][]byte
	var paths [2]string
	for i := range imgs {
		tree := testTree(t, i == 1)
		time.Sleep(1100 * time.Millisecond) // change times a second apart
		paths[i] = filepath.Join(t.TempDir(), "root.img")
		if err := e.Make(t.Context(), paths[i], tree); err != nil {
			t.Fatal(err)
		}
		var err error
		if imgs[i], err = os.ReadFile(paths[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(imgs[0], imgs[1]) {
		n := 0
		for i := range imgs[0] {
			if imgs[0][i] != imgs[1][i] {
				if n < 10 {
					t.Errorf("byte %d (block %d): %#x vs %#x", i, i/4096, imgs[0][i], imgs[1][i])
				}
				n++
			}
		}
		t.Fatalf("the images differ in %d bytes", n)
	}
	for _, p := range []string{"/", "/etc/hostname", "/usr/bin/tool", "/lib/bin", "/usr/share/many", "/lost+found"} {
		out, err := exec.Command("debugfs", "-R", "stat "+p, paths[0]).Output()
		if err != nil {
			t.Fatal(err)
		}
		times := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(l), ": "); ok && strings.HasSuffix(k, "time") {
				times[k], _, _ = strings.Cut(v, " -- ")
			}
		}
		want := times["mtime"]
		if p == "/usr/bin/tool" && want != "0x5f5e1000:00000000" {
			t.Errorf("%s: mtime %s; want 1600000000 kept", p, want)
		}
		for _, k := range []string{"ctime", "atime"} {
			if times[k] != want || want == "" {
				t.Errorf("%s: %s %s; want the mtime %s", p, k, times[k], want)
			}
		}
		if times["crtime"] != "0x67748580:00000000" {
			t.Errorf("%s: crtime %s; want the epoch", p, times["crtime"])
		}
	}
	out, _ := exec.Command("dumpe2fs", "-h", paths[0]).Output()
	for _, want := range []string{"Filesystem UUID:          " + e.UUID, "Directory Hash Seed:      " + e.HashSeed, "Filesystem volume name:   test", "Reserved block count:     0"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dumpe2fs -h has no %q", want)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(paths[0], &st); err != nil || st.Blocks*512 > 16<<20 {
		t.Errorf("a 64 MiB image of a small tree allocates %d bytes (%v); want it sparse", st.Blocks*512, err)
	}
}

func TestExt4TooSmall(t *testing.T) {
	t.Parallel()
	tree := t.TempDir()
	f, _ := os.Create(filepath.Join(tree, "big"))
	f.Write(make([]byte, 8<<20))
	f.Close()
	e := Ext4{Label: "t", UUID: deriveUUID("h", "amd64", "uuid"), HashSeed: deriveUUID("h", "amd64", "hash_seed"), Size: 8 << 20, Epoch: 1735689600}
	err := e.Make(t.Context(), filepath.Join(t.TempDir(), "i.img"), tree)
	if err == nil || !strings.Contains(err.Error(), "raise the recipe's size") {
		t.Errorf("Make = %v; want too small", err)
	}
}
