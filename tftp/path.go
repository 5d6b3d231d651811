package tftp

import (
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// MaxPathLength is the longest file name, in bytes, that [CleanPath]
// accepts. Boot loaders send far shorter names (PXELINUX keeps 255 bytes
// for prefix and name together), and a name must fit in a 512-byte request
// packet with its mode and options anyway.
const MaxPathLength = 255

// CleanPath checks a file name received in a read request and returns it
// as a clean, slash-separated path relative to the served tree: "." and
// empty components are removed ("a/./b//c" becomes "a/b/c").
//
// It refuses, with an error wrapping fs.ErrPermission (TFTP error 2,
// access violation):
//   - the empty name, and names that clean to the tree itself (".", "./");
//   - names longer than MaxPathLength;
//   - names containing a NUL byte or a backslash (Windows-style clients
//     must be configured with forward slashes);
//   - any ".." component, even one that would stay inside the tree
//     ("a/../b"), so that no name can climb out of it;
//   - absolute names: a leading "/" is refused, not stripped, so
//     "/etc/passwd" can never be read. iPXE strips the leading "/" of a
//     DHCP file name itself, and PXELINUX and U-Boot send names relative to
//     the boot file's directory, so they only send absolute names when the
//     DHCP boot file name is absolute: configure relative names.
//
// Symbolic links are the Handler's business: [FileHandler] refuses those
// that point out of its tree.
func CleanPath(p string) (string, error) {
	switch {
	case p == "":
		return "", fmt.Errorf("empty file name: %w", fs.ErrPermission)
	case len(p) > MaxPathLength:
		return "", fmt.Errorf("file name of %d bytes, longer than %d: %w", len(p), MaxPathLength, fs.ErrPermission)
	case strings.IndexByte(p, 0) >= 0:
		return "", fmt.Errorf("file name %q has a NUL byte: %w", p, fs.ErrPermission)
	case strings.IndexByte(p, '\\') >= 0:
		return "", fmt.Errorf("file name %q has a backslash: %w", p, fs.ErrPermission)
	case p[0] == '/':
		return "", fmt.Errorf("absolute file name %q: %w", p, fs.ErrPermission)
	}
	for c := range strings.SplitSeq(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("file name %q has a \"..\" component: %w", p, fs.ErrPermission)
		}
	}
	c := path.Clean(p)
	if c == "." {
		return "", fmt.Errorf("file name %q names no file: %w", p, fs.ErrPermission)
	}
	return c, nil
}
