//go:build rootfsbuild && linux

// The reproducibility test builds real images: it needs root, the network
// (the Debian archive) and a few minutes. Run it with `make test-rootfs`,
// or:
//
//	go test -tags rootfsbuild -run TestReproducible -v -timeout 30m ./rootfs/
//
// RACKBOOT_ROOTFS_RECIPE (default minimal) and RACKBOOT_ROOTFS_ARCH
// (default this machine's) choose what to build, RACKBOOT_ROOTFS_REPO
// (default ..) the module the agent is built from: a snapshot of it if
// someone edits the agent during the test.
package rootfs

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestReproducible builds a recipe twice in a row, in two directories,
// and checks that the images and the manifests are the same bytes. When
// they differ it lists how the two trees differ, which is where every
// source of difference found so far showed.
func TestReproducible(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tool := range []string{"mmdebstrap", "mke2fs", "debugfs", "e2fsck", "systemctl", "go"} {
		testenv.LookPath(t, tool)
	}
	name := cmp.Or(os.Getenv("RACKBOOT_ROOTFS_RECIPE"), "minimal")
	arch := cmp.Or(os.Getenv("RACKBOOT_ROOTFS_ARCH"), hostArch())
	r, err := Load(filepath.Join("recipes", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckEmulation(arch); err != nil {
		t.Fatal(err)
	}
	repo, err := filepath.Abs(cmp.Or(os.Getenv("RACKBOOT_ROOTFS_REPO"), ".."))
	if err != nil {
		t.Fatal(err)
	}
	var (
		dirs [2]string
		ms   [2]*Manifest
	)
	for i := range dirs {
		dirs[i] = t.TempDir()
		start := time.Now()
		ms[i], err = Build(t.Context(), Options{
			Recipe: r, Arch: arch, Out: dirs[i],
			// Shared with make rootfs: the first build of a fresh
			// checkout downloads, the second never does.
			Cache:        "../out/cache/rootfs",
			Repo:         repo,
			AgentVersion: "reproducibility-test",
			KeepTree:     true,
			Logger:       slog.New(slog.NewTextHandler(t.Output(), nil)),
		})
		if err != nil {
			t.Fatalf("build %d: %v", i+1, err)
		}
		t.Logf("build %d of %s-%s: %s, sha256 %s, %d packages", i+1, name, arch, time.Since(start).Round(time.Second), ms[i].Image.SHA256, len(ms[i].Packages))
	}
	if ms[0].Agent == nil {
		t.Logf("WARNING: built without the agent: %v", ms[0].Warnings)
	}
	man := func(i int) []byte {
		b, err := os.ReadFile(filepath.Join(dirs[i], ManifestFile))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if ms[0].Image.SHA256 == ms[1].Image.SHA256 && bytes.Equal(man(0), man(1)) {
		t.Logf("identical: %s (%d bytes)", ms[0].Image.SHA256, ms[0].Image.Size)
		return
	}
	t.Errorf("two builds differ: image sha256 %s and %s", ms[0].Image.SHA256, ms[1].Image.SHA256)
	if !bytes.Equal(man(0), man(1)) {
		t.Errorf("the manifests differ:\n%s\n%s", man(0), man(1))
	}
	for _, d := range diffTrees(t, filepath.Join(dirs[0], "tree"), filepath.Join(dirs[1], "tree")) {
		t.Error(d)
	}
}

// diffTrees lists how two trees differ: entries, types, modes, owners,
// sizes, modification times, symlink targets and content (at most 50).
func diffTrees(t *testing.T, a, b string) []string {
	t.Helper()
	type entry struct {
		mode     fs.FileMode
		uid, gid uint32
		size     int64
		mtime    int64
		extra    string // symlink target or content hash
	}
	scan := func(root string) map[string]entry {
		m := map[string]entry{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			info, _ := d.Info()
			e := entry{mode: info.Mode(), uid: st.Uid, gid: st.Gid, size: st.Size, mtime: st.Mtim.Sec}
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				e.extra, _ = os.Readlink(p)
			case info.Mode().IsRegular():
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				h := sha256.New()
				io.Copy(h, f)
				f.Close()
				e.extra = fmt.Sprintf("%x", h.Sum(nil))
			case info.IsDir():
				e.size = 0 // directory sizes depend on the host file system
			}
			rel, _ := filepath.Rel(root, p)
			m[rel] = e
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ea, eb := scan(a), scan(b)
	var out []string
	for p, x := range ea {
		y, ok := eb[p]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: only in the first build", p))
		case x != y:
			out = append(out, fmt.Sprintf("%s: %+v vs %+v", p, x, y))
		}
	}
	for p := range eb {
		if _, ok := ea[p]; !ok {
			out = append(out, fmt.Sprintf("%s: only in the second build", p))
		}
	}
	if len(out) == 0 {
		out = append(out, "the trees are the same: the difference is in how the image is made (mke2fs, debugfs)")
	}
	return out[:min(len(out), 50)]
}
