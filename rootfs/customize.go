package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Volatile are the paths (globs, relative to the root) that Customize
// removes: per-host, per-build or per-boot state that a shared master
// image must not carry, or that differs from one build to the next.
var Volatile = []string{
	"etc/resolv.conf",                   // mmdebstrap copies the build host's
	"etc/ssh/ssh_host_*",                // made at boot by rackboot-ssh-keygen.service
	"var/lib/dbus/machine-id",           // dbus falls back to /etc/machine-id
	"var/lib/systemd/random-seed",       // every board would start from the same seed
	"var/lib/systemd/credential.secret", //
	"var/lib/dhcp/*",                    // leases
	"var/lib/dpkg/*-old",                // dpkg's backups of its own database
	"var/cache/debconf/*-old",           //
	"var/cache/ldconfig/aux-cache",      //
	"var/cache/man/*",                   // man-db's index, rebuilt by man-db.timer
	"var/cache/fontconfig/*",            //
	"var/cache/apt/*.bin",               //
	"var/lib/apt/lists/*",               // mmdebstrap removes them too
	"etc/apt/apt.conf.d/99mmdebstrap",   // build-time options (--aptopt)
	"etc/dpkg/dpkg.cfg.d/99mmdebstrap",  // build-time options (--dpkgopt)
	"tmp/*", "var/tmp/*", "run/*",       //
	"root/.bash_history", "root/.lesshst", //
}

// Customize turns the tree mmdebstrap made into a master root: it removes
// [Volatile] paths and every file under /var/log (directories stay), writes
// the placeholder /etc/hostname, an empty /etc/machine-id and an empty
// /build, sets root's password, adds the recipe's files and the agent (nil
// for none), and enables, disables and masks the recipe's services with
// systemctl --root.
func Customize(ctx context.Context, r *Recipe, tree string, agent *builtAgent) error {
	for _, g := range Volatile {
		matches, err := filepath.Glob(filepath.Join(tree, g))
		if err != nil {
			return err
		}
		for _, p := range matches {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	if err := emptyLogs(filepath.Join(tree, "var/log")); err != nil {
		return err
	}
	write := func(p string, data []byte, mode os.FileMode) error {
		full := filepath.Join(tree, p)
		os.Remove(full)
		if err := os.WriteFile(full, data, mode); err != nil {
			return err
		}
		return os.Chmod(full, mode) // not masked by the umask
	}
	if err := write("etc/hostname", []byte(r.Hostname+"\n"), 0o644); err != nil {
		return err
	}
	// Empty, not "uninitialized": systemd makes a transient ID at every
	// boot (the initramfs writes it empty again anyway).
	if err := write("etc/machine-id", nil, 0o444); err != nil {
		return err
	}
	build := filepath.Join(tree, BuildMount)
	if err := os.RemoveAll(build); err != nil {
		return err
	}
	if err := os.Mkdir(build, 0o755); err != nil {
		return err
	}
	if err := setRootPassword(filepath.Join(tree, "etc/shadow"), r.RootPassword); err != nil {
		return err
	}
	ids, err := readIDs(tree)
	if err != nil {
		return err
	}
	for _, f := range r.Files {
		if err := addFile(r, tree, f, ids); err != nil {
			return fmt.Errorf("adding %s: %w", f.Path, err)
		}
	}
	enable := slices.Clone(r.Services.Enable)
	if agent != nil {
		for _, f := range []struct {
			src, dst string
			mode     os.FileMode
		}{{agent.binary, agent.Path, 0o755}, {agent.unit, AgentUnitPath, 0o644}} {
			b, err := os.ReadFile(f.src)
			if err != nil {
				return err
			}
			dir, err := parentInside(tree, f.dst)
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(tree, filepath.Join(dir, path.Base(f.dst)))
			if err != nil {
				return err
			}
			if err := write(rel, b, f.mode); err != nil {
				return err
			}
		}
		enable = append(enable, filepath.Base(AgentUnitPath))
	}
	for _, s := range []struct {
		verb  string
		units []string
	}{{"enable", enable}, {"disable", r.Services.Disable}, {"mask", r.Services.Mask}} {
		if len(s.units) == 0 {
			continue
		}
		args := append([]string{"--root=" + tree, "--no-reload", "--quiet", s.verb}, s.units...)
		out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("systemctl %s %s: %w\n%s", s.verb, strings.Join(s.units, " "), err, out)
		}
	}
	return nil
}

// emptyLogs removes everything under dir but directories.
func emptyLogs(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return fs.SkipDir
		}
		if err != nil || d.IsDir() {
			return err
		}
		return os.Remove(p)
	})
}

// setRootPassword sets root's password field in shadow: "*" (locked) or
// "" (empty). The other fields, including the date of the last change
// (SOURCE_DATE_EPOCH when the package made it), stay.
func setRootPassword(shadow, how string) error {
	b, err := os.ReadFile(shadow)
	if err != nil {
		return err
	}
	pw := "*"
	if how == "empty" {
		pw = ""
	}
	lines := strings.Split(string(b), "\n")
	found := false
	for i, l := range lines {
		f := strings.Split(l, ":")
		if len(f) > 2 && f[0] == "root" {
			f[1] = pw
			lines[i] = strings.Join(f, ":")
			found = true
		}
	}
	if !found {
		return fmt.Errorf("%s has no root entry", shadow)
	}
	st, err := os.Stat(shadow)
	if err != nil {
		return err
	}
	return os.WriteFile(shadow, []byte(strings.Join(lines, "\n")), st.Mode().Perm())
}

// ids are the image's user and group names.
type ids struct{ users, groups map[string]int }

func readIDs(tree string) (ids, error) {
	read := func(name string) (map[string]int, error) {
		f, err := os.Open(filepath.Join(tree, "etc", name))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		m := map[string]int{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fl := strings.Split(sc.Text(), ":")
			if len(fl) < 3 {
				continue
			}
			if id, err := strconv.Atoi(fl[2]); err == nil {
				m[fl[0]] = id
			}
		}
		return m, sc.Err()
	}
	u, err := read("passwd")
	if err != nil {
		return ids{}, err
	}
	g, err := read("group")
	return ids{u, g}, err
}

func (i ids) lookup(owner string) (uid, gid int, err error) {
	user, group, _ := strings.Cut(owner, ":")
	id := func(name string, m map[string]int, what string) (int, error) {
		if n, err := strconv.Atoi(name); err == nil {
			return n, nil
		}
		n, ok := m[name]
		if !ok {
			return 0, fmt.Errorf("no %s %q in the image", what, name)
		}
		return n, nil
	}
	if uid, err = id(user, i.users, "user"); err != nil {
		return 0, 0, err
	}
	gid, err = id(group, i.groups, "group")
	return uid, gid, err
}

// addFile adds one recipe file to the tree. Missing parent directories
// are made root:root 0755. Symlinks in the path are resolved as they
// would be in the image (an absolute target is inside the root), and one
// that leads out of the tree is an error.
func addFile(r *Recipe, tree string, f File, ids ids) error {
	uid, gid, err := ids.lookup(f.Owner)
	if err != nil {
		return err
	}
	parent, err := parentInside(tree, f.Path)
	if err != nil {
		return err
	}
	full := filepath.Join(parent, path.Base(f.Path))
	switch f.Type {
	case "dir":
		if st, err := os.Lstat(full); err == nil && !st.IsDir() {
			return fmt.Errorf("%s exists in the image and is not a directory", f.Path)
		}
		if err := os.Mkdir(full, os.FileMode(f.Mode)&0o777); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	case "symlink":
		if err := removeNonDir(full, f.Path); err != nil {
			return err
		}
		if err := os.Symlink(f.Target, full); err != nil {
			return err
		}
		return os.Lchown(full, uid, gid)
	default:
		b, err := r.FileContent(f)
		if err != nil {
			return err
		}
		if err := removeNonDir(full, f.Path); err != nil {
			return err
		}
		if err := os.WriteFile(full, b, os.FileMode(f.Mode)&0o777); err != nil {
			return err
		}
	}
	if err := os.Lchown(full, uid, gid); err != nil {
		return err
	}
	// After chown, which clears set-id bits.
	return os.Chmod(full, fileMode(f.Mode))
}

// removeNonDir removes what is at full (a file or a symlink, not
// followed) so that a recipe file replaces it.
func removeNonDir(full, p string) error {
	st, err := os.Lstat(full)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s exists in the image and is a directory", p)
	}
	return os.Remove(full)
}

// fileMode converts permission bits with set-id and sticky bits.
func fileMode(m Mode) os.FileMode {
	mode := os.FileMode(m) & 0o777
	if m&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}

// parentInside returns the host path of the directory that holds the
// image path p, making missing directories (root:root 0755) on the way.
// Symlinks are resolved as the image would resolve them: an absolute
// target starts at tree. A path that leads out of tree is an error; the
// returned directory has no symlink left in it.
func parentInside(tree, p string) (string, error) {
	dir := path.Dir(path.Clean("/" + p))
	todo := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	cur := tree
	links := 0
	for len(todo) > 0 {
		part := todo[0]
		todo = todo[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if cur == tree {
				return "", fmt.Errorf("%s: leads out of the root", p)
			}
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, part)
		st, err := os.Lstat(next)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(next, 0o755); err != nil {
				return "", err
			}
			if err := os.Chmod(next, 0o755); err != nil { // the umask
				return "", err
			}
			cur = next
		case err != nil:
			return "", err
		case st.Mode()&fs.ModeSymlink != 0:
			if links++; links > 40 {
				return "", fmt.Errorf("%s: too many symlinks", p)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", err
			}
			if path.IsAbs(target) {
				cur = tree
			}
			rel, err := filepath.Rel(tree, filepath.Join(cur, target))
			if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
				return "", fmt.Errorf("%s: %s is a symlink out of the root (to %s)", p, next, target)
			}
			todo = append(strings.Split(target, "/"), todo...)
		case !st.IsDir():
			return "", fmt.Errorf("%s: %s is not a directory", p, next)
		default:
			cur = next
		}
	}
	return cur, nil
}

// ClampTimes sets every modification time in tree later than epoch to
// epoch, drops sub-second parts, and sets access times to modification
// times. Symlinks are changed, not followed. (mkfs.ext4 -d copies access,
// modification and change times; the last can't be set from user space and
// is fixed in the image by [Ext4.Make].)
func ClampTimes(tree string, epoch time.Time) error {
	set := func(p string) error {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		mtime := min(st.Mtim.Sec, epoch.Unix())
		ts := []unix.Timespec{{Sec: mtime}, {Sec: mtime}}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("setting times of %s: %w", p, err)
		}
		return nil
	}
	// Directories last: reading one moves its access time.
	var dirs []string
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
			return nil
		}
		return set(p)
	})
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := set(d); err != nil {
			return err
		}
	}
	return nil
}

// safeRemoveAll removes dir, first unmounting anything mounted under it
// (an interrupted mmdebstrap leaves /proc, /sys and /dev mounted in its
// tree). It refuses to remove a tree that still has mounts.
func safeRemoveAll(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for range 3 {
		mounts, err := mountsUnder(abs)
		if err != nil {
			return err
		}
		if len(mounts) == 0 {
			return os.RemoveAll(abs)
		}
		// Deepest first.
		slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
		for _, m := range mounts {
			unix.Unmount(m, unix.MNT_DETACH)
		}
	}
	return fmt.Errorf("not removing %s: file systems are still mounted under it", abs)
}

func mountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range bytes.Split(b, []byte("\n")) {
		f := strings.Fields(string(l))
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
