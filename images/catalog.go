package images

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Errors returned by Catalog methods.
var (
	// ErrExists is returned by Import, with the stored version, when the
	// same version (the same files) was imported before.
	ErrExists = errors.New("version already imported")
	// ErrMismatch is returned by Import when the image doesn't match its
	// manifest's sha256 or size, and wrapped by a Problem's Err when a
	// stored file no longer matches its recorded sha256, size or mode.
	ErrMismatch = errors.New("checksum mismatch")
)

const (
	catalogDir   = "images"
	lockFile     = ".lock"
	activeFile   = "active"
	recordFile   = "version.json"
	manifestFile = "manifest.json"
	rootFile     = "root.img"
	bootDir      = "boot"
	newPrefix    = ".new-"
	trashPrefix  = ".trash-"
	activePrefix = ".active-"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidName reports whether s can name an image or a version: 1 to 64
// characters from [A-Za-z0-9._-], starting with a letter or digit.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ParseRef splits "NAME@VERSION" and checks both parts.
func ParseRef(ref string) (name, version string, err error) {
	name, version, ok := strings.Cut(ref, "@")
	if !ok || !ValidName(name) || !ValidName(version) {
		return "", "", fmt.Errorf("image version %q: want NAME@VERSION: %w", ref, fs.ErrInvalid)
	}
	return name, version, nil
}

// Catalog is the image catalog of a state directory. It keeps no state of
// its own beyond the directory's name, so any number of Catalogs, in any
// number of processes, can share a directory. It is safe for concurrent
// use.
type Catalog struct {
	state string // the state directory
	dir   string // state/images

	// Now returns the time recorded as a version's import time. Nil means
	// time.Now. Set it before use.
	Now func() time.Time
}

// Open returns the catalog of the state directory dir, creating dir (mode
// 0700, as the server does) and dir/images if needed.
func Open(dir string) (*Catalog, error) {
	if dir == "" {
		return nil, errors.New("opening image catalog: no state directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("opening image catalog: %w", err)
	}
	c := &Catalog{state: abs, dir: filepath.Join(abs, catalogDir)}
	// The state directory is private, as the server makes it.
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("opening image catalog: %w", err)
	}
	if err := os.Mkdir(c.dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("opening image catalog: %w", err)
	}
	return c, nil
}

// Dir returns the catalog's directory, STATE/images.
func (c *Catalog) Dir() string { return c.dir }

func (c *Catalog) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// BootFiles are the kernel and initramfs an architecture boots.
type BootFiles struct {
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
}

// Version is one imported version of an image. Its files never change.
type Version struct {
	Name    string // the image's name
	Version string // the version's name
	// Dir is the version's directory, and RootPath its root image: an
	// ext4 file, mode 0444. Both are absolute.
	Dir      string
	RootPath string
	// Size is the root image's length in bytes and SHA256 its sha256 in
	// lowercase hex.
	Size   int64
	SHA256 string
	// Arch is the root image's architecture.
	Arch string
	// Kernels are the kernel and initramfs to boot the root with, per
	// architecture, as absolute paths.
	Kernels map[string]BootFiles
	// Imported is when the version was imported.
	Imported time.Time
	// Manifest is the manifest the version was imported with.
	Manifest Manifest

	files map[string]fileSum // recorded files by slash path in Dir
}

// String returns NAME@VERSION.
func (v Version) String() string { return v.Name + "@" + v.Version }

// Image is an image of the catalog with its versions.
type Image struct {
	Name string
	// Active is the name of the active version, "" if none is.
	Active string
	// Versions are oldest first.
	Versions []Version
}

// record is version.json.
type record struct {
	Name     string               `json:"name"`
	Version  string               `json:"version"`
	Arch     string               `json:"arch"`
	Imported time.Time            `json:"imported"`
	Root     string               `json:"root"`
	Kernels  map[string]BootFiles `json:"kernels"` // slash paths in the version's directory
	Files    map[string]fileSum   `json:"files"`
}

type fileSum struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

func notExist(name, version, what string) error {
	if version == "" {
		return fmt.Errorf("image %s: %s: %w", name, what, fs.ErrNotExist)
	}
	return fmt.Errorf("image %s@%s: %s: %w", name, version, what, fs.ErrNotExist)
}

// Get returns a version of an image. An unknown image or version is an
// error wrapping fs.ErrNotExist.
func (c *Catalog) Get(name, version string) (Version, error) {
	if !ValidName(name) || !ValidName(version) {
		return Version{}, notExist(name, version, "no such version")
	}
	dir := filepath.Join(c.dir, name, version)
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Version{}, notExist(name, version, "no such version")
	} else if err != nil {
		return Version{}, fmt.Errorf("reading image %s@%s: %w", name, version, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return Version{}, fmt.Errorf("reading image %s@%s: %s: %w", name, version, recordFile, err)
	}
	if r.Name != name || r.Version != version {
		return Version{}, fmt.Errorf("reading image %s@%s: %s names %s@%s", name, version, recordFile, r.Name, r.Version)
	}
	mb, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return Version{}, fmt.Errorf("reading image %s@%s: %w", name, version, err)
	}
	m, err := ParseManifest(mb)
	if err != nil {
		return Version{}, fmt.Errorf("reading image %s@%s: %w", name, version, err)
	}
	v := Version{
		Name: name, Version: version, Dir: dir,
		RootPath: filepath.Join(dir, filepath.FromSlash(r.Root)),
		Size:     r.Files[r.Root].Size, SHA256: r.Files[r.Root].SHA256,
		Arch: r.Arch, Imported: r.Imported, Manifest: m,
		Kernels: make(map[string]BootFiles, len(r.Kernels)),
		files:   r.Files,
	}
	for arch, k := range r.Kernels {
		v.Kernels[arch] = BootFiles{
			Kernel: filepath.Join(dir, filepath.FromSlash(k.Kernel)),
			Initrd: filepath.Join(dir, filepath.FromSlash(k.Initrd)),
		}
	}
	return v, nil
}

// activeName reads the active pointer of an image: "" if it has none.
func (c *Catalog) activeName(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, name, activeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("reading active version of image %s: %w", name, err)
	}
	v := strings.TrimSuffix(string(b), "\n")
	if !ValidName(v) {
		return "", fmt.Errorf("image %s: active version %q: invalid name", name, v)
	}
	return v, nil
}

// Active returns the active version of an image. An unknown image, or
// one without an active version, is an error wrapping fs.ErrNotExist.
func (c *Catalog) Active(name string) (Version, error) {
	if !ValidName(name) {
		return Version{}, notExist(name, "", "no such image")
	}
	v, err := c.activeName(name)
	if err != nil {
		return Version{}, err
	}
	if v == "" {
		return Version{}, notExist(name, "", "no active version")
	}
	return c.Get(name, v)
}

// List returns every image, sorted by name, with its versions and the
// active one. Versions that disappear while List reads (a concurrent GC)
// are left out; a version that can't be read (a damaged version.json or
// manifest.json) is an error, which Verify reports as a Problem.
func (c *Catalog) List() ([]Image, error) {
	imgs, broken, err := c.scan()
	if err != nil {
		return nil, err
	}
	if len(broken) > 0 {
		return nil, broken[0].Err
	}
	return imgs, nil
}

// scan lists the catalog, returning the versions it can't read apart.
func (c *Catalog) scan() ([]Image, []Problem, error) {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("listing images: %w", err)
	}
	var out []Image
	var broken []Problem
	for _, e := range entries {
		if !e.IsDir() || !ValidName(e.Name()) {
			continue
		}
		img, b, err := c.image(e.Name())
		if err != nil {
			return nil, nil, err
		}
		out = append(out, img)
		broken = append(broken, b...)
	}
	return out, broken, nil
}

func (c *Catalog) image(name string) (Image, []Problem, error) {
	img := Image{Name: name}
	active, err := c.activeName(name)
	if err != nil {
		return Image{}, nil, err
	}
	img.Active = active
	entries, err := os.ReadDir(filepath.Join(c.dir, name))
	if err != nil {
		return Image{}, nil, fmt.Errorf("listing versions of image %s: %w", name, err)
	}
	var broken []Problem
	for _, e := range entries {
		if !e.IsDir() || !ValidName(e.Name()) {
			continue
		}
		v, err := c.Get(name, e.Name())
		if err != nil {
			if _, serr := os.Stat(filepath.Join(c.dir, name, e.Name(), recordFile)); errors.Is(serr, fs.ErrNotExist) {
				continue // deleted meanwhile, or not a version
			}
			broken = append(broken, Problem{Name: name, Version: e.Name(), Err: err})
			continue
		}
		img.Versions = append(img.Versions, v)
	}
	slices.SortFunc(img.Versions, func(a, b Version) int {
		return cmp.Or(a.Imported.Compare(b.Imported), cmp.Compare(a.Version, b.Version))
	})
	return img, broken, nil
}

// Activate makes version the active version of image name, atomically:
// readers see the previous active version or this one. It waits for
// other mutations of the catalog to finish.
func (c *Catalog) Activate(name, version string) error {
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := c.Get(name, version); err != nil {
		return fmt.Errorf("activating: %w", err)
	}
	return c.setActive(name, version)
}

// setActive writes the pointer file of an image through a temporary file
// and rename(2). The caller holds the catalog lock.
func (c *Catalog) setActive(name, version string) error {
	dir := filepath.Join(c.dir, name)
	f, err := os.CreateTemp(dir, activePrefix)
	if err != nil {
		return fmt.Errorf("activating %s@%s: %w", name, version, err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	_, err = f.WriteString(version + "\n")
	err = errors.Join(err, f.Chmod(0o644), f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, activeFile))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("activating %s@%s: %w", name, version, err)
	}
	return nil
}

// lock takes the catalog's exclusive flock, waiting for it, and returns
// the function that releases it.
func (c *Catalog) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(c.dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking image catalog: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking image catalog: %w", err)
	}
	return func() { f.Close() }, nil
}

// syncDir fsyncs a directory, making the renames and creations in it
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
