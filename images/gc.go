package images

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/rackboot/rackboot/nbd/cow"
)

// GC deletes the versions that are neither active nor in use and returns
// them. A version is in use if inUse (which may be nil) says so, for the
// boots the caller knows of, or if a session layer in STATE/sessions/
// was made over its root image, found by path, by the file's device and
// inode, or by the session's image name (NAME@VERSION). Images without an
// active version are left alone. GC also removes what interrupted
// imports, activations and deletions left behind.
//
// GC holds the catalog lock throughout. Each deletion renames the version
// out of the way first (the atomic step), then removes its files.
func (c *Catalog) GC(ctx context.Context, inUse func(Version) bool) ([]Version, error) {
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	sessions, err := cow.ListSessions(c.state)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("collecting images: %w", err)
	}
	imgs, err := c.List()
	if err != nil {
		return nil, err
	}
	var deleted []Version
	var errs []error
	for _, img := range imgs {
		if err := c.cleanup(img.Name); err != nil {
			errs = append(errs, err)
		}
		if img.Active == "" {
			continue
		}
		for _, v := range img.Versions {
			if err := ctx.Err(); err != nil {
				return deleted, errors.Join(append(errs, err)...)
			}
			if v.Version == img.Active || (inUse != nil && inUse(v)) || usedBySession(v, sessions) {
				continue
			}
			if err := c.remove(v); err != nil {
				errs = append(errs, err)
				continue
			}
			deleted = append(deleted, v)
		}
	}
	return deleted, errors.Join(errs...)
}

// usedBySession reports whether one of sessions layers v's root image.
func usedBySession(v Version, sessions []cow.SessionInfo) bool {
	return slices.ContainsFunc(sessions, v.LayeredBy)
}

// LayeredBy reports whether session s is a layer over v's root image: by
// the image name it records (NAME@VERSION), by its base's absolute path,
// or by its base's device and inode (cow.Image.Identity), which also
// catches a base opened through another path.
func (v Version) LayeredBy(s cow.SessionInfo) bool {
	if s.Image == v.String() {
		return true
	}
	if p := filepath.Clean(s.BasePath); filepath.IsAbs(p) && (p == v.Dir || strings.HasPrefix(p, v.Dir+string(filepath.Separator))) {
		return true
	}
	var dev, ino uint64
	if n, _ := fmt.Sscanf(s.BaseID, "dev=%d ino=%d", &dev, &ino); n == 2 {
		var st unix.Stat_t
		return unix.Stat(v.RootPath, &st) == nil && dev == uint64(st.Dev) && ino == uint64(st.Ino)
	}
	return false
}

// remove deletes a version: renamed into a trash directory, then removed.
// The caller holds the catalog lock.
func (c *Catalog) remove(v Version) error {
	imgDir := filepath.Join(c.dir, v.Name)
	trash, err := os.MkdirTemp(imgDir, trashPrefix)
	if err != nil {
		return fmt.Errorf("deleting %s: %w", v, err)
	}
	if err := os.Rename(v.Dir, filepath.Join(trash, v.Version)); err != nil {
		os.Remove(trash)
		return fmt.Errorf("deleting %s: %w", v, err)
	}
	if err := syncDir(imgDir); err != nil {
		return fmt.Errorf("deleting %s: %w", v, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("deleting %s: %w", v, err)
	}
	return nil
}

// cleanup removes the leftovers of interrupted work in an image's
// directory: trash and temporary pointer files, and temporary version
// directories no import holds a lock on. The caller holds the catalog
// lock.
func (c *Catalog) cleanup(name string) error {
	dir := filepath.Join(c.dir, name)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cleaning up image %s: %w", name, err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), trashPrefix), strings.HasPrefix(e.Name(), activePrefix):
			errs = append(errs, os.RemoveAll(p))
		case strings.HasPrefix(e.Name(), newPrefix):
			if abandoned(p) {
				errs = append(errs, os.RemoveAll(p))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleaning up image %s: %w", name, err)
	}
	return nil
}

// abandoned reports whether no import holds the temporary directory dir.
func abandoned(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
}
