package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
)

// Problem is something Verify found wrong with a stored version.
type Problem struct {
	Name    string // image
	Version string // version, "" for a problem with the image's active pointer
	// File is the file concerned, as a slash path in the version's
	// directory ("root.img", "boot/amd64/vmlinuz"), or "" for the version
	// as a whole.
	File string
	// Err says what is wrong. It wraps ErrMismatch for a file whose
	// contents, size or mode differ from the record, and fs.ErrNotExist
	// for a missing file or version.
	Err error
}

func (p Problem) String() string {
	s := p.Name
	if p.Version != "" {
		s += "@" + p.Version
	}
	if p.File != "" {
		s += ": " + p.File
	}
	return s + ": " + p.Err.Error()
}

// Verify rereads every file of every version and returns the ones whose
// sha256 or size differ from what was recorded at import, or that are
// missing or writable, the versions whose record or manifest can't be
// read, and the images whose active pointer names no stored version. It takes no lock: versions that GC deletes meanwhile
// are skipped. The error is for failures to read the catalog itself and
// for ctx.
func (c *Catalog) Verify(ctx context.Context) ([]Problem, error) {
	imgs, out, err := c.scan()
	if err != nil {
		return nil, err
	}
	for _, img := range imgs {
		if img.Active != "" {
			if _, err := os.Stat(filepath.Join(c.dir, img.Name, img.Active, recordFile)); err != nil {
				out = append(out, Problem{Name: img.Name, Err: fmt.Errorf("active version %s: %w", img.Active, err)})
			}
		}
		for _, v := range img.Versions {
			ps, err := verifyVersion(ctx, v)
			if err != nil {
				return out, err
			}
			if _, err := os.Stat(filepath.Join(v.Dir, recordFile)); errors.Is(err, fs.ErrNotExist) {
				continue // deleted by GC while we read it
			}
			out = append(out, ps...)
		}
	}
	return out, nil
}

func verifyVersion(ctx context.Context, v Version) ([]Problem, error) {
	var out []Problem
	bad := func(file string, err error) {
		out = append(out, Problem{Name: v.Name, Version: v.Version, File: file, Err: err})
	}
	if v.Manifest.SHA256 != v.SHA256 {
		bad(manifestFile, fmt.Errorf("image sha256 %s, but %s is %s: %w", v.Manifest.SHA256, rootFile, v.SHA256, ErrMismatch))
	}
	for _, rel := range slices.Sorted(maps.Keys(v.files)) {
		want := v.files[rel]
		got, mode, err := hashFile(ctx, filepath.Join(v.Dir, filepath.FromSlash(rel)))
		switch {
		case ctx.Err() != nil:
			return out, ctx.Err()
		case err != nil:
			bad(rel, err)
		case got.Size != want.Size:
			bad(rel, fmt.Errorf("size %d, want %d: %w", got.Size, want.Size, ErrMismatch))
		case got.SHA256 != want.SHA256:
			bad(rel, fmt.Errorf("sha256 %s, want %s: %w", got.SHA256, want.SHA256, ErrMismatch))
		case mode&0o222 != 0:
			bad(rel, fmt.Errorf("mode %04o, want 0444: %w", mode, ErrMismatch))
		}
	}
	return out, nil
}

// hashFile returns a file's sha256, size and permission bits.
func hashFile(ctx context.Context, name string) (fileSum, fs.FileMode, error) {
	f, err := os.Open(name)
	if err != nil {
		return fileSum{}, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileSum{}, 0, err
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, ctxReader{ctx, f}, make([]byte, 1<<20))
	if err != nil {
		return fileSum{}, 0, fmt.Errorf("reading: %w", err)
	}
	return fileSum{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, fi.Mode().Perm(), nil
}

// ctxReader stops reading once its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
