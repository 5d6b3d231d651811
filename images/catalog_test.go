package images

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/rackboot/rackboot/internal/testenv"
)

// mkfsImage makes a small ext4 image holding one file, /etc/release,
// with the given contents.
func mkfsImage(t *testing.T, path, release string) {
	t.Helper()
	mkfs := testenv.LookPath(t, "mkfs.ext4")
	src := filepath.Join(t.TempDir(), "root")
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "release"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", src, path, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// recipe is a fake `make rootfs` output.
type recipe struct {
	out  string // the out/ directory
	dir  string // out/images/NAME-ARCH
	arch string
}

// makeRecipe writes out/images/NAME-ARCH/{root.img,manifest.json} with an
// ext4 image whose /etc/release is release, and out/boot/ARCH/{vmlinuz,
// initramfs.cpio.gz} whose contents name release too.
func makeRecipe(t *testing.T, out, name, arch, release string) recipe {
	t.Helper()
	r := recipe{out: out, dir: filepath.Join(out, "images", name+"-"+arch), arch: arch}
	boot := filepath.Join(out, "boot", arch)
	for _, d := range []string{r.dir, boot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(r.dir, "root.img")
	mkfsImage(t, img, release)
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(r.dir, "manifest.json"), map[string]any{
		"name": name, "arch": arch, "suite": "bookworm", "epoch": 1748736000, // 2025-06-01
		"recipe_sha256": strings.Repeat("ab", 32),
		"packages":      []Package{{Name: "base-files", Version: "12.4+deb12u11"}},
		"sha256":        fileSHA256(t, img), "size": fi.Size(),
	})
	for file, body := range map[string]string{"vmlinuz": "kernel " + release, "initramfs.cpio.gz": "initrd " + release} {
		if err := os.WriteFile(filepath.Join(boot, file), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func mustImport(t *testing.T, c *Catalog, src ImportSource) Version {
	t.Helper()
	v, err := c.Import(t.Context(), src)
	if err != nil {
		t.Fatalf("Import(%+v): %v", src, err)
	}
	return v
}

func mustFromDir(t *testing.T, dir string) ImportSource {
	t.Helper()
	src, err := FromDir(dir)
	if err != nil {
		t.Fatalf("FromDir(%s): %v", dir, err)
	}
	return src
}

func mustOpen(t *testing.T, dir string) *Catalog {
	t.Helper()
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var versionRE = regexp.MustCompile(`^20250601-[0-9a-f]{12}$`)

func TestImport(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		src func(t *testing.T) (ImportSource, recipe)
	}{
		"recipe output dir": {func(t *testing.T) (ImportSource, recipe) {
			r := makeRecipe(t, t.TempDir(), "minimal", "amd64", "one")
			return mustFromDir(t, r.dir), r
		}},
		"self-contained dir": {func(t *testing.T) (ImportSource, recipe) {
			r := makeRecipe(t, t.TempDir(), "minimal", "amd64", "one")
			if err := os.Rename(filepath.Join(r.out, "boot"), filepath.Join(r.dir, "boot")); err != nil {
				t.Fatal(err)
			}
			r.out = r.dir
			return mustFromDir(t, r.dir), r
		}},
		"image and manifest": {func(t *testing.T) (ImportSource, recipe) {
			r := makeRecipe(t, t.TempDir(), "minimal", "amd64", "one")
			boot := filepath.Join(r.out, "boot", "amd64")
			return ImportSource{
				Image: filepath.Join(r.dir, "root.img"), Manifest: filepath.Join(r.dir, "manifest.json"),
				Boot: map[string]BootFiles{"amd64": {Kernel: filepath.Join(boot, "vmlinuz"), Initrd: filepath.Join(boot, "initramfs.cpio.gz")}},
			}, r
		}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			src, r := tt.src(t)
			c := mustOpen(t, t.TempDir())
			imported := time.Date(2025, 6, 2, 3, 4, 5, 0, time.UTC)
			c.Now = func() time.Time { return imported }
			v := mustImport(t, c, src)

			if v.Name != "minimal-amd64" || !versionRE.MatchString(v.Version) {
				t.Errorf("imported %s; want minimal-amd64@20250601-<12 hex>", v)
			}
			wantRoot, err := os.ReadFile(filepath.Join(r.dir, "root.img"))
			if err != nil {
				t.Fatal(err)
			}
			gotRoot, err := os.ReadFile(v.RootPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gotRoot, wantRoot) {
				t.Errorf("%s differs from the imported image", v.RootPath)
			}
			h := sha256.Sum256(wantRoot)
			if v.SHA256 != hex.EncodeToString(h[:]) || v.Size != int64(len(wantRoot)) {
				t.Errorf("SHA256, Size = %s, %d; want %x, %d", v.SHA256, v.Size, h, len(wantRoot))
			}
			if v.Arch != "amd64" || v.Manifest.Suite != "bookworm" || !v.Imported.Equal(imported) ||
				!v.Manifest.Epoch.Equal(time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)) {
				t.Errorf("Arch %q, Suite %q, Imported %v, Epoch %v", v.Arch, v.Manifest.Suite, v.Imported, v.Manifest.Epoch)
			}
			k := v.Kernels["amd64"]
			for file, want := range map[string]string{k.Kernel: "kernel one", k.Initrd: "initrd one"} {
				if !filepath.IsAbs(file) || !strings.HasPrefix(file, v.Dir+"/") {
					t.Errorf("boot file %s: not an absolute path in %s", file, v.Dir)
				}
				if b, err := os.ReadFile(file); err != nil || string(b) != want {
					t.Errorf("%s = %q, %v; want %q", file, b, err, want)
				}
			}
			for _, file := range []string{v.RootPath, k.Kernel, k.Initrd, filepath.Join(v.Dir, "manifest.json")} {
				fi, err := os.Stat(file)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o444 {
					t.Errorf("%s: mode %v; want 0444", file, fi.Mode())
				}
			}
			mb, _ := os.ReadFile(filepath.Join(r.dir, "manifest.json"))
			if !bytes.Equal(v.Manifest.Raw, mb) {
				t.Error("stored manifest differs from the imported one")
			}

			// The first version of an image becomes active; Get and
			// Active return the same as Import.
			active, err := c.Active("minimal-amd64")
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Get(v.Name, v.Version)
			if err != nil {
				t.Fatal(err)
			}
			opt := cmp.AllowUnexported(Version{})
			if d := cmp.Diff(v, active, opt); d != "" {
				t.Errorf("Active differs from Import (-import +active):\n%s", d)
			}
			if d := cmp.Diff(v, got, opt); d != "" {
				t.Errorf("Get differs from Import (-import +get):\n%s", d)
			}

			// Importing the same files again changes nothing.
			again, err := c.Import(t.Context(), src)
			if !errors.Is(err, ErrExists) || again.Version != v.Version {
				t.Errorf("second Import = %s, %v; want %s, ErrExists", again, err, v)
			}
			if ps, err := c.Verify(t.Context()); err != nil || len(ps) > 0 {
				t.Errorf("Verify = %v, %v; want no problems", ps, err)
			}
		})
	}
}

// TestImportSparse checks that holes in an image stay holes.
func TestImportSparse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	img := filepath.Join(dir, "root.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	data := bytes.Repeat([]byte("rackboot"), 1000) // 8000 bytes: spans a block boundary
	for _, off := range []int64{0, 5000, 1<<20 - 100, 33 << 20, size - 8000} {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	writeJSON(t, filepath.Join(dir, "manifest.json"), map[string]any{"name": "sparse", "arch": "arm64", "sha256": fileSHA256(t, img), "size": size})
	kernel, initrd := filepath.Join(dir, "Image"), filepath.Join(dir, "initrd")
	os.WriteFile(kernel, []byte("k"), 0o644)
	os.WriteFile(initrd, []byte("i"), 0o644)
	c := mustOpen(t, t.TempDir())
	v := mustImport(t, c, ImportSource{Image: img, Manifest: filepath.Join(dir, "manifest.json"),
		Boot: map[string]BootFiles{"arm64": {Kernel: kernel, Initrd: initrd}}})
	if fileSHA256(t, v.RootPath) != fileSHA256(t, img) {
		t.Fatal("copy differs")
	}
	var st unix.Stat_t
	if err := unix.Stat(v.RootPath, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Errorf("copy of a %d-byte image with 40 KB of data allocates %d bytes; want it sparse", size, st.Blocks*512)
	}
	if filepath.Base(v.Kernels["arm64"].Kernel) != "Image" {
		t.Errorf("kernel stored as %s; want its base name kept", v.Kernels["arm64"].Kernel)
	}
}

func TestImportRejects(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		edit    func(t *testing.T, src *ImportSource, manifest map[string]any)
		wantErr error  // errors.Is, if set
		wantMsg string // in the error
	}{
		"sha256 mismatch": {
			edit: func(t *testing.T, _ *ImportSource, m map[string]any) {
				m["sha256"] = strings.Repeat("0", 64)
			},
			wantErr: ErrMismatch, wantMsg: "manifest says " + strings.Repeat("0", 64),
		},
		"flipped byte in the image": {
			edit: func(t *testing.T, src *ImportSource, _ map[string]any) {
				flipByte(t, src.Image, 1024)
			},
			wantErr: ErrMismatch,
		},
		"size mismatch": {
			edit:    func(t *testing.T, _ *ImportSource, m map[string]any) { m["size"] = 4096 },
			wantErr: ErrMismatch, wantMsg: "manifest says 4096",
		},
		"no sha256": {
			edit:    func(t *testing.T, _ *ImportSource, m map[string]any) { delete(m, "sha256") },
			wantMsg: "no sha256",
		},
		"no kernel for the arch": {
			edit: func(t *testing.T, src *ImportSource, _ map[string]any) {
				src.Boot = map[string]BootFiles{"arm64": src.Boot["amd64"]}
			},
			wantMsg: "no kernel and initramfs for its arch amd64",
		},
		"missing initrd": {
			edit: func(t *testing.T, src *ImportSource, _ map[string]any) {
				os.Remove(src.Boot["amd64"].Initrd)
			},
			wantErr: fs.ErrNotExist,
		},
		"bad name": {
			edit:    func(t *testing.T, src *ImportSource, _ map[string]any) { src.Name = "minimal@2" },
			wantMsg: `image name "minimal@2"`,
		},
		"missing image": {
			edit:    func(t *testing.T, src *ImportSource, _ map[string]any) { os.Remove(src.Image) },
			wantErr: fs.ErrNotExist,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := makeRecipe(t, t.TempDir(), "minimal", "amd64", "one")
			src := mustFromDir(t, r.dir)
			var m map[string]any
			b, _ := os.ReadFile(src.Manifest)
			json.Unmarshal(b, &m)
			tt.edit(t, &src, m)
			writeJSON(t, src.Manifest, m)
			state := t.TempDir()
			c := mustOpen(t, state)
			v, err := c.Import(t.Context(), src)
			if err == nil {
				t.Fatalf("Import = %s; want an error", v)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Import: %v; want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Import: %v; want it to say %q", err, tt.wantMsg)
			}
			// Nothing is left behind: no version, no temporary directory.
			var left []string
			filepath.WalkDir(filepath.Join(state, "images"), func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Name() != ".lock" && p != filepath.Join(state, "images") && p != filepath.Join(state, "images", "minimal-amd64") {
					left = append(left, p)
				}
				return nil
			})
			if len(left) > 0 {
				t.Errorf("failed import left %q", left)
			}
		})
	}
}

// flipByte inverts the byte at off in a file, read-only or not.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chmod(path, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

// twoVersions imports two versions of minimal-amd64 into a fresh catalog
// in state: v1 is active.
func twoVersions(t *testing.T, state string) (c *Catalog, v1, v2 Version) {
	t.Helper()
	c = mustOpen(t, state)
	v1 = mustImport(t, c, mustFromDir(t, makeRecipe(t, t.TempDir(), "minimal", "amd64", "one").dir))
	v2 = mustImport(t, c, mustFromDir(t, makeRecipe(t, t.TempDir(), "minimal", "amd64", "two").dir))
	return c, v1, v2
}

func TestList(t *testing.T) {
	t.Parallel()
	c := mustOpen(t, t.TempDir())
	tick := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	c.Now = func() time.Time { tick = tick.Add(time.Hour); return tick }
	if imgs, err := c.List(); err != nil || len(imgs) != 0 {
		t.Fatalf("List of an empty catalog = %v, %v", imgs, err)
	}
	a1 := mustImport(t, c, mustFromDir(t, makeRecipe(t, t.TempDir(), "minimal", "amd64", "one").dir))
	b1 := mustImport(t, c, mustFromDir(t, makeRecipe(t, t.TempDir(), "debian", "arm64", "one").dir))
	a2 := mustImport(t, c, mustFromDir(t, makeRecipe(t, t.TempDir(), "minimal", "amd64", "two").dir))
	// Leftovers of interrupted work are not versions.
	os.Mkdir(filepath.Join(c.Dir(), "minimal-amd64", ".new-123"), 0o755)
	os.Mkdir(filepath.Join(c.Dir(), ".trash-1"), 0o755)

	imgs, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ Name, Active, Versions string }
	var got []row
	for _, img := range imgs {
		var vs []string
		for _, v := range img.Versions {
			vs = append(vs, v.Version)
		}
		got = append(got, row{img.Name, img.Active, strings.Join(vs, " ")})
	}
	want := []row{
		{"debian-arm64", b1.Version, b1.Version},
		{"minimal-amd64", a1.Version, a1.Version + " " + a2.Version},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("List (-want +got):\n%s", d)
	}
}

func TestActivate(t *testing.T) {
	t.Parallel()
	c, v1, v2 := twoVersions(t, t.TempDir())
	tests := []struct {
		name, image, version string
		wantErr              error
		wantActive           string
	}{
		{"second version", "minimal-amd64", v2.Version, nil, v2.Version},
		{"again", "minimal-amd64", v2.Version, nil, v2.Version},
		{"back", "minimal-amd64", v1.Version, nil, v1.Version},
		{"unknown version", "minimal-amd64", "20250601-000000000000", fs.ErrNotExist, v1.Version},
		{"unknown image", "other", v1.Version, fs.ErrNotExist, v1.Version},
		{"bad version", "minimal-amd64", "../../etc", fs.ErrNotExist, v1.Version},
	}
	for _, tt := range tests {
		err := c.Activate(tt.image, tt.version)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: Activate(%q, %q) = %v; want %v", tt.name, tt.image, tt.version, err, tt.wantErr)
		}
		if v, err := c.Active("minimal-amd64"); err != nil || v.Version != tt.wantActive {
			t.Errorf("%s: Active = %s, %v; want %s", tt.name, v.Version, err, tt.wantActive)
		}
	}
	if _, err := c.Active("other"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Active(other) = %v; want fs.ErrNotExist", err)
	}
}

// TestActivateConcurrentReaders flips the active version while readers,
// in this process and through other Catalogs on the same directory, read
// it: every read sees one of the two versions, never an error.
func TestActivateConcurrentReaders(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	c, v1, v2 := twoVersions(t, state)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var reads [4]int
	var errs [4][]string
	for i := range 4 {
		wg.Go(func() {
			r := mustOpen(t, state) // a reader of its own, as the server is
			for !stop.Load() {
				v, err := r.Active("minimal-amd64")
				switch {
				case err != nil:
					errs[i] = append(errs[i], err.Error())
				case v.Version != v1.Version && v.Version != v2.Version:
					errs[i] = append(errs[i], "read "+v.String())
				}
				reads[i]++
			}
		})
	}
	for i := range 200 {
		v := []Version{v1, v2}[i%2]
		if err := c.Activate(v.Name, v.Version); err != nil {
			t.Error(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	for i := range 4 {
		if len(errs[i]) > 0 {
			t.Errorf("reader %d: %d of %d reads failed, first: %s", i, len(errs[i]), reads[i], errs[i][0])
		}
		if reads[i] == 0 {
			t.Errorf("reader %d read nothing", i)
		}
	}
	// No temporary pointer files are left.
	m, _ := filepath.Glob(filepath.Join(c.Dir(), "minimal-amd64", ".active-*"))
	if len(m) > 0 {
		t.Errorf("left behind: %q", m)
	}
}

// TestConcurrentMutations runs imports, activations and GCs of one
// catalog from several goroutines, each with its own Catalog as separate
// rackboot commands would: every import lands, and the catalog verifies.
func TestConcurrentMutations(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	const n = 4
	srcs := make([]ImportSource, n)
	for i := range n {
		srcs[i] = mustFromDir(t, makeRecipe(t, t.TempDir(), "minimal", "amd64", fmt.Sprint("release ", i)).dir)
	}
	var wg sync.WaitGroup
	versions := make([]Version, n)
	for i := range n {
		wg.Go(func() {
			c := mustOpen(t, state)
			v, err := c.Import(t.Context(), srcs[i])
			if err != nil {
				t.Error(err)
				return
			}
			versions[i] = v
			if err := c.Activate(v.Name, v.Version); err != nil {
				t.Error(err)
			}
			// Keep every version: this checks that GC's cleanup leaves
			// running imports alone.
			if _, err := c.GC(t.Context(), func(Version) bool { return true }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	c := mustOpen(t, state)
	imgs, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || len(imgs[0].Versions) != n {
		t.Fatalf("List = %+v; want one image with %d versions", imgs, n)
	}
	if ps, err := c.Verify(t.Context()); err != nil || len(ps) > 0 {
		t.Errorf("Verify = %v, %v", ps, err)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		damage   func(t *testing.T, c *Catalog, v Version)
		want     []string // Problem.String() prefixes (after NAME@VERSION: for versions)
		mismatch bool     // the problems wrap ErrMismatch
	}{
		"intact": {damage: func(*testing.T, *Catalog, Version) {}},
		"flipped byte in the image": {
			damage: func(t *testing.T, _ *Catalog, v Version) { flipByte(t, v.RootPath, 5000) },
			want:   []string{"root.img: sha256 "}, mismatch: true,
		},
		"flipped byte in the kernel": {
			damage: func(t *testing.T, _ *Catalog, v Version) { flipByte(t, v.Kernels["amd64"].Kernel, 0) },
			want:   []string{"boot/amd64/vmlinuz: sha256 "}, mismatch: true,
		},
		"truncated initramfs": {
			damage: func(t *testing.T, _ *Catalog, v Version) {
				if err := os.Truncate(v.Kernels["amd64"].Initrd, 3); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"boot/amd64/initramfs.cpio.gz: size 3, want 10"}, mismatch: true,
		},
		"missing kernel": {
			damage: func(t *testing.T, _ *Catalog, v Version) { os.Remove(v.Kernels["amd64"].Kernel) },
			want:   []string{"boot/amd64/vmlinuz: open "},
		},
		"writable image": {
			damage: func(t *testing.T, _ *Catalog, v Version) { os.Chmod(v.RootPath, 0o644) },
			want:   []string{"root.img: mode 0644, want 0444"}, mismatch: true,
		},
		"missing manifest": {
			damage: func(t *testing.T, _ *Catalog, v Version) { os.Remove(filepath.Join(v.Dir, "manifest.json")) },
			want:   []string{"reading image minimal-amd64@"},
		},
		"garbled record": {
			damage: func(t *testing.T, _ *Catalog, v Version) {
				p := filepath.Join(v.Dir, "version.json")
				os.Chmod(p, 0o644)
				os.WriteFile(p, []byte("{"), 0o444)
			},
			want: []string{"reading image minimal-amd64@"},
		},
		"edited manifest": {
			damage: func(t *testing.T, _ *Catalog, v Version) {
				p := filepath.Join(v.Dir, "manifest.json")
				os.Chmod(p, 0o644)
				b, _ := os.ReadFile(p)
				os.WriteFile(p, bytes.Replace(b, []byte("bookworm"), []byte("trixie!!"), 1), 0o444)
			},
			want: []string{"manifest.json: sha256 "}, mismatch: true,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, v1, v2 := twoVersions(t, t.TempDir())
			tt.damage(t, c, v2)
			ps, err := c.Verify(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			// List fails on a version it can't read, and only then.
			unreadable := len(tt.want) > 0 && strings.HasPrefix(tt.want[0], "reading image")
			if _, err := c.List(); (err != nil) != unreadable {
				t.Errorf("List: %v; want an error: %v", err, unreadable)
			}
			if len(ps) != len(tt.want) {
				t.Fatalf("Verify = %q; want %d problems", ps, len(tt.want))
			}
			for i, p := range ps {
				want := v2.String() + ": " + tt.want[i]
				if !strings.HasPrefix(p.String(), want) {
					t.Errorf("problem %d = %q; want %q...", i, p, want)
				}
				if p.Version == v1.Version {
					t.Errorf("problem %q in the intact version", p)
				}
				if errors.Is(p.Err, ErrMismatch) != tt.mismatch {
					t.Errorf("problem %q: errors.Is(ErrMismatch) = %v; want %v", p, !tt.mismatch, tt.mismatch)
				}
			}
		})
	}

	t.Run("active version missing", func(t *testing.T) {
		t.Parallel()
		c, _, v2 := twoVersions(t, t.TempDir())
		os.WriteFile(filepath.Join(c.Dir(), "minimal-amd64", "active"), []byte("20990101-000000000000\n"), 0o644)
		ps, err := c.Verify(t.Context())
		if err != nil || len(ps) != 1 || ps[0].Version != "" || !errors.Is(ps[0].Err, fs.ErrNotExist) {
			t.Errorf("Verify = %q, %v; want the dangling pointer of %s", ps, err, v2.Name)
		}
	})
}

func TestGC(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	c, v1, v2 := twoVersions(t, state)
	v3 := mustImport(t, c, mustFromDir(t, makeRecipe(t, t.TempDir(), "minimal", "amd64", "three").dir))
	other := mustImport(t, c, mustFromDir(t, makeRecipe(t, t.TempDir(), "debian", "arm64", "one").dir))
	if err := c.Activate(v3.Name, v3.Version); err != nil {
		t.Fatal(err)
	}
	// An image without an active version is left alone.
	orphan := mustImport(t, c, mustFromDir(t, makeRecipe(t, t.TempDir(), "orphan", "amd64", "one").dir))
	os.Remove(filepath.Join(c.Dir(), orphan.Name, "active"))
	// Leftovers of interrupted work go; a running import's directory stays.
	stale := filepath.Join(c.Dir(), v1.Name, ".new-stale")
	os.Mkdir(stale, 0o755)
	os.WriteFile(filepath.Join(stale, "root.img"), []byte("partial"), 0o444)
	os.Mkdir(filepath.Join(c.Dir(), v1.Name, ".trash-1"), 0o755)
	running, held, err := c.tempDir(filepath.Join(c.Dir(), v1.Name))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	var asked []string
	inUse := func(v Version) bool {
		asked = append(asked, v.String())
		return v.Version == v1.Version
	}
	deleted, err := c.GC(t.Context(), inUse)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{v2.String()}, names(deleted)); d != "" {
		t.Errorf("GC deleted (-want +got):\n%s", d)
	}
	// inUse is asked about versions that are neither active nor orphaned.
	if d := cmp.Diff([]string{v1.String(), v2.String()}, asked); d != "" {
		t.Errorf("GC asked inUse about (-want +got):\n%s", d)
	}
	for _, v := range []Version{v1, v3, other, orphan} {
		if _, err := c.Get(v.Name, v.Version); err != nil {
			t.Errorf("after GC: %v", err)
		}
	}
	if _, err := c.Get(v2.Name, v2.Version); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get(%s) after GC = %v; want fs.ErrNotExist", v2, err)
	}
	if _, err := os.Stat(v2.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still exists", v2.Dir)
	}
	for _, p := range []string{stale, filepath.Join(c.Dir(), v1.Name, ".trash-1")} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("GC left %s", p)
		}
	}
	if _, err := os.Stat(running); err != nil {
		t.Errorf("GC removed a running import's directory: %v", err)
	}

	// Once v1 is no longer in use it goes too; the active one never does.
	deleted, err = c.GC(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{v1.String()}, names(deleted)); d != "" {
		t.Errorf("second GC deleted (-want +got):\n%s", d)
	}
	if v, err := c.Active(v3.Name); err != nil || v.Version != v3.Version {
		t.Errorf("Active after GC = %s, %v; want %s", v, err, v3)
	}
	if ps, err := c.Verify(t.Context()); err != nil || len(ps) > 0 {
		t.Errorf("Verify after GC = %q, %v", ps, err)
	}
}

func names(vs []Version) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.String())
	}
	return out
}

func TestParseRef(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, name, version string
		ok                bool
	}{
		{"minimal-amd64@20250601-3f2a9c1d4e5b", "minimal-amd64", "20250601-3f2a9c1d4e5b", true},
		{"minimal", "", "", false},
		{"@v", "", "", false},
		{"a@", "", "", false},
		{"a@b@c", "", "", false},
		{"a/b@c", "", "", false},
		{"a@..", "", "", false},
	}
	for _, tt := range tests {
		name, version, err := ParseRef(tt.in)
		if (err == nil) != tt.ok || name != tt.name || version != tt.version {
			t.Errorf("ParseRef(%q) = %q, %q, %v; want %q, %q, ok=%v", tt.in, name, version, err, tt.name, tt.version, tt.ok)
		}
	}
}
