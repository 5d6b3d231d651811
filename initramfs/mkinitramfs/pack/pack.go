// Package pack builds rackboot's initramfs archives reproducibly with
// u-root's cpio package: records in a fixed order (sorted paths, parents
// first), MakeAllReproducible (zero times, root owner, fixed inodes), and
// gzip without name or modification time. The same inputs give the same
// bytes.
package pack

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// Pair is DEST=SRC.
type Pair struct{ Dest, Src string }

// ParsePair parses DEST=SRC.
func ParsePair(v string) (Pair, error) {
	d, s, ok := strings.Cut(v, "=")
	if !ok || d == "" || s == "" {
		return Pair{}, fmt.Errorf("want DEST=SRC, got %q", v)
	}
	return Pair{Dest: strings.Trim(d, "/"), Src: s}, nil
}

// Spec is what goes in the initramfs.
type Spec struct {
	Init     string // path of the init program, packed at /init
	Files    []Pair // regular files, mode 0755
	Symlinks []Pair // Dest -> Src (the link target)
	// Modules is a tree holding lib/modules/RELEASE/..., packed as is.
	Modules string
}

// Result gives the compressed sizes.
type Result struct {
	Base, ModulesSize int64
	Modules           int
}

// dirs of the base archive: the init's mount points.
var baseDirs = []string{"bin", "dev", "etc", "newroot", "proc", "run", "sys", "tmp"}

// Base returns the records of the base archive.
func Base(sp Spec) ([]cpio.Record, error) {
	recs := []cpio.Record{cpio.CharDev("dev/console", 0o600, 5, 1)}
	for _, d := range baseDirs {
		recs = append(recs, cpio.Directory(d, 0o755))
	}
	initData, err := os.ReadFile(sp.Init)
	if err != nil {
		return nil, err
	}
	recs = append(recs, file("init", initData, 0o755))
	for _, f := range sp.Files {
		b, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, err
		}
		recs = append(recs, file(f.Dest, b, 0o755))
	}
	for _, l := range sp.Symlinks {
		recs = append(recs, cpio.Symlink(l.Dest, l.Src))
	}
	return finish(recs), nil
}

// ModuleRecords returns the records of the module tree under root, and
// the number of modules.
func ModuleRecords(root string) ([]cpio.Record, int, error) {
	var recs []cpio.Record
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			recs = append(recs, cpio.Directory(rel, 0o755))
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if strings.Contains(path.Base(rel), ".ko") {
				n++
			}
			recs = append(recs, file(rel, b, 0o644))
		default:
			return fmt.Errorf("%s: only files and directories are packed", p)
		}
		return nil
	})
	return finish(recs), n, err
}

func file(name string, data []byte, perm uint64) cpio.Record {
	return cpio.StaticFile(name, string(data), perm)
}

// finish adds missing parent directories, sorts and normalizes.
func finish(recs []cpio.Record) []cpio.Record {
	have := map[string]bool{}
	for _, r := range recs {
		have[r.Name] = true
	}
	for _, r := range recs {
		for d := path.Dir(r.Name); d != "." && d != "/" && !have[d]; d = path.Dir(d) {
			have[d] = true
			recs = append(recs, cpio.Directory(d, 0o755))
		}
	}
	slices.SortFunc(recs, func(a, b cpio.Record) int { return strings.Compare(a.Name, b.Name) })
	cpio.MakeAllReproducible(recs)
	return recs
}

// Archive returns the gzip-compressed newc archive of recs.
func Archive(recs []cpio.Record) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	w := cpio.Newc.Writer(zw)
	if err := cpio.WriteRecords(w, recs); err != nil {
		return nil, err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write writes the initramfs to out: the base archive, then the modules
// archive if sp.Modules is set.
func Write(out string, sp Spec) (Result, error) {
	base, err := Base(sp)
	if err != nil {
		return Result{}, err
	}
	b, err := Archive(base)
	if err != nil {
		return Result{}, err
	}
	res := Result{Base: int64(len(b))}
	if sp.Modules != "" {
		mods, n, err := ModuleRecords(sp.Modules)
		if err != nil {
			return Result{}, err
		}
		m, err := Archive(mods)
		if err != nil {
			return Result{}, err
		}
		res.ModulesSize, res.Modules = int64(len(m)), n
		b = append(b, m...)
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return Result{}, err
	}
	return res, os.Rename(tmp, out)
}
