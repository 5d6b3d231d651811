package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mke2fsConf replaces the host's /etc/mke2fs.conf, so that the features
// and sizes of the file system don't depend on the machine that builds it.
// These are Debian 12's defaults for ext4; Linux 4.x and later mount it.
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 0

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
	small = {
	}
	default = {
	}
`

// Ext4 makes an ext4 image from a directory, reproducibly.
type Ext4 struct {
	Label, UUID, HashSeed string
	// Size is the file system size in bytes.
	Size int64
	// Epoch is every time stamp mke2fs makes itself (the superblock's,
	// the root directory's, lost+found's, inode creation times).
	Epoch int64
	// Output receives the tools' output; nil discards it.
	Output io.Writer
}

// Make writes the image img (a sparse file of e.Size bytes) holding tree.
//
// mke2fs -d (e2fsprogs 1.47) walks the tree in sorted order (scandir with
// alphasort, made byte order by LC_ALL=C), so the host file system's
// readdir order doesn't matter; it copies access, modification and change
// times. Change times can't be set from user space and access times move
// as the tree is read, so Make sets both to the modification time in
// every inode with debugfs afterwards. The UUID and
// the directory hash seed are given, and E2FSPROGS_FAKE_TIME stands in
// for the clock. With tree's time stamps clamped ([ClampTimes]), the same
// tree gives the same bytes.
func (e Ext4) Make(ctx context.Context, img, tree string) error {
	out := e.Output
	if out == nil {
		out = io.Discard
	}
	conf := img + ".mke2fs.conf"
	if err := os.WriteFile(conf, []byte(mke2fsConf), 0o644); err != nil {
		return err
	}
	defer os.Remove(conf)
	env := append(os.Environ(), "MKE2FS_CONFIG="+conf, "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(e.Epoch, 10), "LC_ALL=C", "TZ=UTC")

	// The content must fit with room to spare: mke2fs fails late and
	// obscurely when it doesn't.
	used, err := treeBytes(tree)
	if err != nil {
		return err
	}
	if used > e.Size*9/10 {
		return fmt.Errorf("the root holds %d MiB, too much for a %d MiB file system: raise the recipe's size", used>>20, e.Size>>20)
	}

	os.Remove(img)
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	err = f.Truncate(e.Size)
	f.Close()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "mke2fs", "-F", "-q", "-t", "ext4",
		"-L", e.Label, "-U", e.UUID,
		// Inode tables marked zeroed (the file is sparse, so they are):
		// otherwise the kernel's lazy init would write them into every
		// board's layer at its first mount.
		"-E", "hash_seed="+e.HashSeed+",lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
		"-d", tree, img, strconv.FormatInt(e.Size>>10, 10)+"k")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("mke2fs -d %s: %w", tree, err)
	}

	// Change and access times: debugfs commands per path, in one run.
	// Access times too, because reading the tree (mke2fs does) updates
	// them on the host, and whether it does depends on its mount options.
	script := img + ".debugfs"
	sf, err := os.Create(script)
	if err != nil {
		return err
	}
	defer os.Remove(script)
	w := bufio.NewWriter(sf)
	err = filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(tree, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		q, err := debugfsQuote("/" + filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "sif %s ctime @%d\nsif %s atime @%d\n", q, st.Mtim.Sec, q, st.Mtim.Sec)
		return nil
	})
	if err == nil {
		err = w.Flush()
	}
	if cerr := sf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd = exec.CommandContext(ctx, "debugfs", "-w", "-f", script, img)
	cmd.Env = env
	cmd.Stdout = io.Discard
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debugfs (setting change times): %w\n%s", err, stderr.String())
	}
	if msg := debugfsErrors(stderr.String()); msg != "" {
		return fmt.Errorf("debugfs (setting change times): %s", msg)
	}
	// A last check of the whole file system.
	cmd = exec.CommandContext(ctx, "e2fsck", "-f", "-n", img)
	cmd.Env = env
	var fsck bytes.Buffer
	cmd.Stdout, cmd.Stderr = &fsck, &fsck
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("e2fsck -fn %s: %w\n%s", img, err, fsck.String())
	}
	return nil
}

// treeBytes is roughly what tree takes in the file system: its blocks
// on disk.
func treeBytes(tree string) (int64, error) {
	var n int64
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n += st.Blocks * 512
		return nil
	})
	return n, err
}

// debugfsQuote quotes a path for a debugfs command line (ss library
// rules: double quotes group, "" is a quote inside them).
func debugfsQuote(p string) (string, error) {
	if strings.ContainsAny(p, "\n\r") {
		return "", fmt.Errorf("path %q has a line break: debugfs can't address it", p)
	}
	return `"` + strings.ReplaceAll(p, `"`, `""`) + `"`, nil
}

// debugfsErrors returns debugfs's complaints, without its banner.
func debugfsErrors(stderr string) string {
	var msgs []string
	for _, l := range strings.Split(stderr, "\n") {
		if l == "" || strings.HasPrefix(l, "debugfs ") {
			continue
		}
		msgs = append(msgs, l)
	}
	return strings.Join(msgs, "\n")
}
