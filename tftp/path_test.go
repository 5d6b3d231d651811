package tftp

import (
	"errors"
	"io/fs"
	"path"
	"strings"
	"testing"
)

func TestCleanPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want string // "" means refused with fs.ErrPermission
	}{
		{"pxelinux.0", "pxelinux.0"},
		{"pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-52-54-00-12-34-56"},
		{"a/./b//c/", "a/b/c"},
		{"./boot.scr.uimg", "boot.scr.uimg"},
		{"...", "..."},
		{"a..b/..c", "a..b/..c"},
		{"", ""},
		{".", ""},
		{"./", ""},
		{"..", ""},
		{"../x", ""},
		{"a/../../x", ""},
		{"a/../b", ""},
		{"a/..", ""},
		{"/etc/passwd", ""},
		{"//etc/passwd", ""},
		{"/pxelinux.0", ""},
		{`a\b`, ""},
		{`..\..\windows`, ""},
		{"a\x00b", ""},
		{strings.Repeat("a", MaxPathLength), strings.Repeat("a", MaxPathLength)},
		{strings.Repeat("a", MaxPathLength+1), ""},
	}
	for _, tt := range tests {
		got, err := CleanPath(tt.in)
		if tt.want == "" {
			if !errors.Is(err, fs.ErrPermission) {
				t.Errorf("CleanPath(%q) = %q, %v; want an error wrapping fs.ErrPermission", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("CleanPath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"pxelinux.0", "a/./b//c/", "../x", "a/../../x", "/etc/passwd", `a\b`, "a\x00", ".", "...", "x/..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := CleanPath(p)
		if err != nil {
			if !errors.Is(err, fs.ErrPermission) {
				t.Fatalf("CleanPath(%q) error %v does not wrap fs.ErrPermission", p, err)
			}
			return
		}
		switch {
		case got == "" || got == ".":
			t.Fatalf("CleanPath(%q) = %q: names no file", p, got)
		case path.IsAbs(got):
			t.Fatalf("CleanPath(%q) = %q: absolute", p, got)
		case strings.ContainsAny(got, "\\\x00"):
			t.Fatalf("CleanPath(%q) = %q: has a backslash or NUL", p, got)
		case len(got) > MaxPathLength:
			t.Fatalf("CleanPath(%q) = %q: too long", p, got)
		}
		for c := range strings.SplitSeq(got, "/") {
			if c == ".." || c == "." || c == "" {
				t.Fatalf("CleanPath(%q) = %q: has component %q", p, got, c)
			}
		}
		if again, err := CleanPath(got); err != nil || again != got {
			t.Fatalf("CleanPath(CleanPath(%q)) = %q, %v; want %q", p, again, err, got)
		}
	})
}
