package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Names of the files in a recipe output directory (see [FromDir]).
const (
	RecipeImage    = "root.img"
	RecipeManifest = "manifest.json"
	RecipeKernel   = "vmlinuz"
	RecipeInitrd   = "initramfs.cpio.gz"
)

// ImportSource is what Import copies into the catalog.
type ImportSource struct {
	// Image is the root image file and Manifest its manifest.
	Image    string
	Manifest string
	// Name is the image's name in the catalog. Empty means the manifest's
	// name and arch, NAME-ARCH ("minimal-amd64"), as `make rootfs` names
	// its output directory; a name that already ends in -ARCH is kept.
	Name string
	// Boot are the kernel and initramfs files per architecture. The
	// manifest's arch is required. Their base names are kept.
	Boot map[string]BootFiles
}

// FromDir returns the ImportSource for a recipe output directory,
// out/images/RECIPE-ARCH/ as `make rootfs` writes it: root.img and
// manifest.json in dir, and the kernel and initramfs of the manifest's
// arch from dir/boot/ARCH/ if that exists (a self-contained directory),
// else from ../../boot/ARCH/ (out/boot/ARCH/, where `make initramfs`
// puts them), as vmlinuz and initramfs.cpio.gz.
func FromDir(dir string) (ImportSource, error) {
	src := ImportSource{
		Image:    filepath.Join(dir, RecipeImage),
		Manifest: filepath.Join(dir, RecipeManifest),
	}
	b, err := readManifest(src.Manifest)
	if err != nil {
		return ImportSource{}, err
	}
	m, err := ParseManifest(b)
	if err != nil {
		return ImportSource{}, fmt.Errorf("%s: %w", src.Manifest, err)
	}
	boot := filepath.Join(dir, bootDir, m.Arch)
	if _, err := os.Stat(boot); err != nil {
		boot = filepath.Join(dir, "..", "..", bootDir, m.Arch)
	}
	src.Boot = map[string]BootFiles{m.Arch: {
		Kernel: filepath.Join(boot, RecipeKernel),
		Initrd: filepath.Join(boot, RecipeInitrd),
	}}
	return src, nil
}

func readManifest(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("reading manifest: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading manifest %s: %w", name, err)
	}
	return b, nil
}

// Import copies an image, its manifest and its boot files into a new
// version and returns it. It checks the image against the manifest's
// sha256 and size as it copies (one read of each file), and fails with an
// error wrapping ErrMismatch if they differ. If the same files were
// imported before, it returns the stored version and ErrExists. The
// first version of an image becomes its active version; later ones need
// Activate.
//
// The copy is built in a temporary directory that is fsynced and renamed
// into place, so a version is complete or absent, even after a crash.
// Cancelling ctx stops the copy.
func (c *Catalog) Import(ctx context.Context, src ImportSource) (Version, error) {
	mb, err := readManifest(src.Manifest)
	if err != nil {
		return Version{}, err
	}
	m, err := ParseManifest(mb)
	if err != nil {
		return Version{}, fmt.Errorf("%s: %w", src.Manifest, err)
	}
	name := src.Name
	if name == "" {
		if m.Name == "" {
			return Version{}, fmt.Errorf("%s: manifest has no name: name the image", src.Manifest)
		}
		name = m.Name
		if !strings.HasSuffix(name, "-"+m.Arch) {
			name += "-" + m.Arch
		}
	}
	if !ValidName(name) {
		return Version{}, fmt.Errorf("image name %q: want 1-64 of [A-Za-z0-9._-], starting with a letter or digit", name)
	}
	if _, ok := src.Boot[m.Arch]; !ok {
		return Version{}, fmt.Errorf("importing %s: no kernel and initramfs for its arch %s", name, m.Arch)
	}
	for arch, bf := range src.Boot {
		switch {
		case !archRE.MatchString(arch):
			return Version{}, fmt.Errorf("importing %s: arch %q: want a Debian architecture name", name, arch)
		case bf.Kernel == "" || bf.Initrd == "":
			return Version{}, fmt.Errorf("importing %s: arch %s needs both a kernel and an initramfs", name, arch)
		case filepath.Base(bf.Kernel) == filepath.Base(bf.Initrd):
			return Version{}, fmt.Errorf("importing %s: arch %s: kernel and initramfs are both named %s", name, arch, filepath.Base(bf.Kernel))
		}
	}

	imgDir := filepath.Join(c.dir, name)
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return Version{}, fmt.Errorf("importing %s: %w", name, err)
	}
	tmp, held, err := c.tempDir(imgDir)
	if err != nil {
		return Version{}, fmt.Errorf("importing %s: %w", name, err)
	}
	defer os.RemoveAll(tmp) // no-op after the rename
	defer held.Close()

	r := record{
		Name: name, Arch: m.Arch, Imported: c.now().UTC(), Root: rootFile,
		Kernels: map[string]BootFiles{}, Files: map[string]fileSum{},
	}
	sum, err := copyFile(ctx, tmp, rootFile, src.Image)
	if err != nil {
		return Version{}, fmt.Errorf("importing %s: %w", name, err)
	}
	if sum.SHA256 != m.SHA256 {
		return Version{}, fmt.Errorf("importing %s: %s has sha256 %s, manifest says %s: %w", name, src.Image, sum.SHA256, m.SHA256, ErrMismatch)
	}
	if m.Size != 0 && sum.Size != m.Size {
		return Version{}, fmt.Errorf("importing %s: %s is %d bytes, manifest says %d: %w", name, src.Image, sum.Size, m.Size, ErrMismatch)
	}
	r.Files[rootFile] = sum
	if r.Files[manifestFile], err = writeFile(tmp, manifestFile, mb); err != nil {
		return Version{}, fmt.Errorf("importing %s: %w", name, err)
	}
	for _, arch := range slices.Sorted(maps.Keys(src.Boot)) {
		bf := src.Boot[arch]
		if err := os.MkdirAll(filepath.Join(tmp, bootDir, arch), 0o755); err != nil {
			return Version{}, fmt.Errorf("importing %s: %w", name, err)
		}
		k := BootFiles{
			Kernel: path.Join(bootDir, arch, filepath.Base(bf.Kernel)),
			Initrd: path.Join(bootDir, arch, filepath.Base(bf.Initrd)),
		}
		for _, f := range [][2]string{{k.Kernel, bf.Kernel}, {k.Initrd, bf.Initrd}} {
			if r.Files[f[0]], err = copyFile(ctx, tmp, f[0], f[1]); err != nil {
				return Version{}, fmt.Errorf("importing %s: %w", name, err)
			}
		}
		r.Kernels[arch] = k
		if err := syncDir(filepath.Join(tmp, bootDir, arch)); err != nil {
			return Version{}, fmt.Errorf("importing %s: %w", name, err)
		}
	}
	if err := syncDir(filepath.Join(tmp, bootDir)); err != nil {
		return Version{}, fmt.Errorf("importing %s: %w", name, err)
	}
	r.Version = versionName(m, r)
	rb, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return Version{}, err
	}
	if _, err := writeFile(tmp, recordFile, append(rb, '\n')); err != nil {
		return Version{}, fmt.Errorf("importing %s: %w", name, err)
	}
	if err := syncDir(tmp); err != nil {
		return Version{}, fmt.Errorf("importing %s: %w", name, err)
	}
	return c.commit(tmp, name, r.Version)
}

// commit renames a complete temporary version directory into place and
// activates it if the image has no active version yet.
func (c *Catalog) commit(tmp, name, version string) (Version, error) {
	unlock, err := c.lock()
	if err != nil {
		return Version{}, err
	}
	defer unlock()
	dst := filepath.Join(c.dir, name, version)
	if _, err := os.Stat(dst); err == nil {
		v, err := c.Get(name, version)
		if err != nil {
			return Version{}, err
		}
		return v, fmt.Errorf("importing %s: %w", v, ErrExists)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return Version{}, fmt.Errorf("importing %s@%s: %w", name, version, err)
	}
	if err := errors.Join(syncDir(filepath.Join(c.dir, name)), syncDir(c.dir)); err != nil {
		return Version{}, fmt.Errorf("importing %s@%s: %w", name, version, err)
	}
	active, err := c.activeName(name)
	if err != nil {
		return Version{}, err
	}
	if active == "" {
		if err := c.setActive(name, version); err != nil {
			return Version{}, err
		}
	}
	return c.Get(name, version)
}

// tempDir makes a temporary version directory in imgDir and returns it
// with an flock held on it, so that GC, which removes what interrupted
// imports left, leaves it alone. Both happen under the catalog lock,
// which GC holds while it looks.
func (c *Catalog) tempDir(imgDir string) (string, *os.File, error) {
	unlock, err := c.lock()
	if err != nil {
		return "", nil, err
	}
	defer unlock()
	tmp, err := os.MkdirTemp(imgDir, newPrefix)
	if err != nil {
		return "", nil, err
	}
	held, err := os.Open(tmp)
	if err == nil {
		err = unix.Flock(int(held.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		os.RemoveAll(tmp)
		if held != nil {
			held.Close()
		}
		return "", nil, fmt.Errorf("locking %s: %w", tmp, err)
	}
	return tmp, held, nil
}

// versionName names a version: the manifest's epoch (or else the import
// time) as a UTC date, and 12 hex digits of the sha256 of its file list.
func versionName(m Manifest, r record) string {
	t := m.Epoch
	if t.IsZero() {
		t = r.Imported
	}
	var list bytes.Buffer
	for _, p := range slices.Sorted(maps.Keys(r.Files)) {
		fmt.Fprintf(&list, "%s  %s\n", r.Files[p].SHA256, p)
	}
	h := sha256.Sum256(list.Bytes())
	return t.UTC().Format("20060102") + "-" + hex.EncodeToString(h[:6])
}

// copyBlock is the granularity at which copyFile leaves holes for zeros.
const copyBlock = 4096

// copyFile copies the regular file src to rel (a slash path) in dir,
// hashing it in the same pass, and makes the copy read-only (0444) and
// durable. Blocks of zeros become holes, so sparse images stay sparse.
func copyFile(ctx context.Context, dir, rel, src string) (fileSum, error) {
	in, err := os.Open(src)
	if err != nil {
		return fileSum{}, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fileSum{}, err
	}
	if !fi.Mode().IsRegular() {
		return fileSum{}, fmt.Errorf("%s: not a regular file", src)
	}
	out, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(rel)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fileSum{}, err
	}
	defer out.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return fileSum{}, err
		}
		n, rerr := io.ReadFull(in, buf)
		if n > 0 {
			h.Write(buf[:n])
			if err := writeSparse(out, buf[:n], off); err != nil {
				return fileSum{}, fmt.Errorf("copying %s: %w", src, err)
			}
			off += int64(n)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return fileSum{}, fmt.Errorf("reading %s: %w", src, rerr)
		}
	}
	if err := out.Truncate(off); err != nil {
		return fileSum{}, fmt.Errorf("copying %s: %w", src, err)
	}
	if err := errors.Join(out.Chmod(0o444), out.Sync(), out.Close()); err != nil {
		return fileSum{}, fmt.Errorf("copying %s: %w", src, err)
	}
	return fileSum{SHA256: hex.EncodeToString(h.Sum(nil)), Size: off}, nil
}

// writeFile writes b to name in dir, read-only and durable.
func writeFile(dir, name string, b []byte) (fileSum, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fileSum{}, err
	}
	_, err = f.Write(b)
	if err := errors.Join(err, f.Chmod(0o444), f.Sync(), f.Close()); err != nil {
		return fileSum{}, fmt.Errorf("writing %s: %w", name, err)
	}
	h := sha256.Sum256(b)
	return fileSum{SHA256: hex.EncodeToString(h[:]), Size: int64(len(b))}, nil
}

// writeSparse writes b at off in f, skipping the blocks of b that are all
// zeros: they stay holes (the caller truncates f to its full size).
func writeSparse(f *os.File, b []byte, off int64) error {
	var zero [copyBlock]byte
	start := -1 // start of the current run of non-zero blocks
	for i := 0; ; i += copyBlock {
		done := i >= len(b)
		if !done {
			blk := b[i:min(i+copyBlock, len(b))]
			if !bytes.Equal(blk, zero[:len(blk)]) {
				if start < 0 {
					start = i
				}
				continue
			}
		}
		if start >= 0 {
			if _, err := f.WriteAt(b[start:min(i, len(b))], off+int64(start)); err != nil {
				return err
			}
			start = -1
		}
		if done {
			return nil
		}
	}
}
