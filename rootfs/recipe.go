package rootfs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Arches are the Debian architectures a recipe can name, and the Go
// GOARCH (and GOARM) the agent is built with for each.
var Arches = map[string]struct{ GOARCH, GOARM string }{
	"amd64": {"amd64", ""},
	"arm64": {"arm64", ""},
	"armhf": {"arm", "7"},
}

// Variants are the mmdebstrap variants a recipe can start from.
var Variants = []string{"essential", "apt", "required", "minbase", "buildd", "important", "standard"}

// Defaults for fields a recipe leaves out.
const (
	// DefaultSize is the default [Recipe.Size]: the file system's size.
	// The image file is sparse, so unused space costs nothing on disk.
	DefaultSize = 2 << 30
	// DefaultHostname is the default [Recipe.Hostname].
	DefaultHostname = "rackboot-unnamed"
	// DefaultRootPassword is the default [Recipe.RootPassword].
	DefaultRootPassword = "locked"
)

// Recipe is one master image, as declared in rootfs/recipes/NAME.yaml.
// [Load] returns a valid Recipe with its defaults applied; it is not
// modified afterwards.
type Recipe struct {
	// Name is the file name without .yaml; it names the output
	// directory (NAME-ARCH) and the file system label.
	Name string `yaml:"-" json:"name"`
	// Description is free text.
	Description string `yaml:"description" json:"description,omitempty"`
	// Suite is the Debian suite (bookworm, trixie...). Required.
	Suite string `yaml:"suite" json:"suite"`
	// Architectures lists the Debian architectures the recipe supports
	// (amd64, arm64, armhf). Required.
	Architectures []string `yaml:"architectures" json:"architectures"`
	// Variant is the mmdebstrap variant the package set starts from
	// (minbase is Essential: yes, Priority: required and apt). Required.
	Variant string `yaml:"variant" json:"variant"`
	// Mirrors are apt sources lines ("deb URI SUITE COMPONENTS"), written
	// to the image's /etc/apt/sources.list in this order. Required: the
	// recipe says where its packages come from (a snapshot.debian.org URL
	// pins them).
	Mirrors []string `yaml:"mirrors" json:"mirrors"`
	// Packages are installed on top of the variant, with their hard
	// dependencies (never recommends). NAME or NAME=VERSION.
	Packages []string `yaml:"packages" json:"packages"`
	// SourceDateEpoch is SOURCE_DATE_EPOCH for the build: every time
	// stamp in the image is at most this (seconds since 1970). Required.
	SourceDateEpoch int64 `yaml:"source_date_epoch" json:"source_date_epoch"`
	// Hostname is the placeholder in /etc/hostname; the initramfs
	// replaces it with the board's name at each boot.
	Hostname string `yaml:"hostname" json:"hostname"`
	// Size is the file system size: bytes, or a number with a KiB, MiB or
	// GiB suffix.
	Size Size `yaml:"size" json:"size"`
	// RootPassword is "locked" (no password login as root) or "empty"
	// (root logs in without a password, on the console; sshd refuses
	// empty passwords).
	RootPassword string `yaml:"root_password" json:"root_password"`
	// Files are added to the root after the packages are installed,
	// in this order.
	Files []File `yaml:"files" json:"files,omitempty"`
	// Services are enabled, disabled and masked after Files are added
	// (systemctl --root), in that order.
	Services Services `yaml:"services" json:"services"`
	// Agent says whether to install the rackboot agent (cross-built
	// from ./cmd/rackboot-agent) and enable its unit.
	Agent bool `yaml:"agent" json:"agent"`

	dir   string         // the recipe file's directory: File.Source is relative to it
	file  string         // the recipe file, for errors
	lines map[string]int // field path → line
}

// File is one file, directory or symbolic link added to the root.
type File struct {
	// Path is absolute, inside the root.
	Path string `yaml:"path" json:"path"`
	// Type is file (the default), dir or symlink.
	Type string `yaml:"type" json:"type"`
	// Source is a file next to the recipe (relative to its directory)
	// holding a file's content; Content is the content inline. A file
	// has exactly one of them.
	Source  string `yaml:"source" json:"source,omitempty"`
	Content string `yaml:"content" json:"content,omitempty"`
	// Target is a symlink's target.
	Target string `yaml:"target" json:"target,omitempty"`
	// Mode is the permission bits, octal: "0644" (the default for
	// files), "0755" (for directories). Ignored for symlinks.
	Mode Mode `yaml:"mode" json:"mode"`
	// Owner is USER:GROUP, names from the image's /etc/passwd and
	// /etc/group or numbers. Default root:root.
	Owner string `yaml:"owner" json:"owner"`
}

// Services lists systemd units to change. Packages' own defaults
// (Debian enables what it installs) apply to the rest.
type Services struct {
	Enable  []string `yaml:"enable" json:"enable,omitempty"`
	Disable []string `yaml:"disable" json:"disable,omitempty"`
	Mask    []string `yaml:"mask" json:"mask,omitempty"`
}

// Mode is a permission mode written in octal in a recipe.
type Mode uint32

// UnmarshalYAML reads "0644" or 0644 as octal.
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.ParseUint(strings.TrimPrefix(n.Value, "0o"), 8, 32)
	if n.Kind != yaml.ScalarNode || err != nil || v > 0o7777 {
		return typeError(n, "mode %q: want an octal number like \"0644\"", n.Value)
	}
	*m = Mode(v)
	return nil
}

// MarshalJSON writes the mode as an octal string.
func (m Mode) MarshalJSON() ([]byte, error) { return json.Marshal(fmt.Sprintf("%04o", uint32(m))) }

// Size is a size in bytes, written in a recipe as 2GiB, 512MiB or a
// number of bytes.
type Size int64

// UnmarshalYAML reads a size with an optional KiB, MiB or GiB suffix.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return typeError(n, "size %q: want bytes or a number with KiB, MiB or GiB", n.Value)
	}
	*s = Size(v)
	return nil
}

// typeError is an error of a custom decoder, as a *yaml.TypeError so
// that decoding goes on and every error is reported.
func typeError(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, fmt.Sprintf(format, args...))}}
}

// ParseSize parses "2GiB", "512MiB", "64KiB" or a number of bytes.
func ParseSize(s string) (int64, error) {
	mult := int64(1)
	for suf, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
			break
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || v <= 0 || v > (1<<46)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}

var (
	recipeName  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,15}$`)
	packageName = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$`)
	unitName    = regexp.MustCompile(`^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|target|path|mount|automount|swap|slice)$`)
	hostName    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	ownerSpec   = regexp.MustCompile(`^[a-z_0-9][a-z0-9_.-]*:[a-z_0-9][a-z0-9_.-]*$`)
)

// Load reads and validates the recipe file at name (rootfs/recipes/NAME.yaml).
// Decoding is strict: unknown and duplicate keys are errors. All problems
// are reported at once, each as "file:line: field: problem".
func Load(name string) (*Recipe, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("reading recipe: %w", err)
	}
	return Parse(name, data)
}

// Parse is [Load] for a recipe already read; name is the file's path,
// which names the recipe and locates its File.Source files.
func Parse(name string, data []byte) (*Recipe, error) {
	r := &Recipe{
		Name:         strings.TrimSuffix(filepath.Base(name), filepath.Ext(name)),
		Hostname:     DefaultHostname,
		Size:         DefaultSize,
		RootPassword: DefaultRootPassword,
		dir:          filepath.Dir(name),
		file:         name,
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty recipe", name)
		}
		return nil, fmt.Errorf("%s: %s", name, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	r.lines = lineMap(&doc)
	keyErrs, dup := r.checkKeys(&doc)
	if dup {
		// The decoder stops at a duplicate key: nothing more to say.
		return nil, errors.Join(keyErrs...)
	}
	if err := doc.Decode(r); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("%s: %s", name, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		for _, e := range te.Errors {
			keyErrs = append(keyErrs, fmt.Errorf("%s:%s", name, strings.TrimPrefix(e, "line ")))
		}
		return nil, errors.Join(keyErrs...)
	}
	if err := r.validate(); err != nil {
		keyErrs = append(keyErrs, err)
	}
	if len(keyErrs) > 0 {
		return nil, errors.Join(keyErrs...)
	}
	return r, nil
}

// lineMap records the line of each mapping key ("files[2].mode").
func lineMap(doc *yaml.Node) map[string]int {
	lines := map[string]int{}
	var walk func(n *yaml.Node, p string)
	walk = func(n *yaml.Node, p string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, p)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if p != "" {
					k = p + "." + k
				}
				lines[k] = n.Content[i].Line
				walk(n.Content[i+1], k)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				k := fmt.Sprintf("%s[%d]", p, i)
				lines[k] = c.Line
				walk(c, k)
			}
		}
	}
	walk(doc, "")
	return lines
}

// knownKeys are the keys each mapping may hold, by field path pattern:
// the yaml tags of the struct decoded there.
var knownKeys = map[string][]string{
	"":         yamlKeys(reflect.TypeFor[Recipe]()),
	"files[]":  yamlKeys(reflect.TypeFor[File]()),
	"services": yamlKeys(reflect.TypeFor[Services]()),
}

func yamlKeys(t reflect.Type) []string {
	var keys []string
	for f := range t.Fields() {
		if k, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); k != "" && k != "-" {
			keys = append(keys, k)
		}
	}
	return keys
}

// checkKeys reports unknown and duplicate keys (Node.Decode checks
// neither all at once), and whether there were duplicates.
func (r *Recipe) checkKeys(doc *yaml.Node) (errs []error, dup bool) {
	// Unknown and duplicate keys.
	var keys func(n *yaml.Node, p, pattern string)
	keys = func(n *yaml.Node, p, pattern string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				keys(c, p, pattern)
			}
		case yaml.MappingNode:
			seen := map[string]int{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				fp := k
				if p != "" {
					fp = p + "." + k
				}
				if known, ok := knownKeys[pattern]; ok && !slices.Contains(known, k) {
					errs = append(errs, fmt.Errorf("%s:%d: %s: unknown field (known: %s)", r.file, n.Content[i].Line, fp, strings.Join(known, ", ")))
				}
				if l, seen := seen[k]; seen {
					errs = append(errs, fmt.Errorf("%s:%d: %s: duplicate key (first at line %d)", r.file, n.Content[i].Line, fp, l))
					dup = true
				}
				seen[k] = n.Content[i].Line
				sub := k
				if pattern != "" {
					sub = pattern + "." + k
				}
				keys(n.Content[i+1], fp, sub)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				keys(c, fmt.Sprintf("%s[%d]", p, i), pattern+"[]")
			}
		}
	}
	keys(doc, "", "")
	return errs, dup
}

func (r *Recipe) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		line := 0
		for p := field; p != ""; {
			if l, ok := r.lines[p]; ok {
				line = l
				break
			}
			i := strings.LastIndexAny(p, ".[")
			if i < 0 {
				break
			}
			p = p[:i]
		}
		loc := r.file
		if line > 0 {
			loc = fmt.Sprintf("%s:%d", r.file, line)
		}
		errs = append(errs, fmt.Errorf("%s: %s: %s", loc, field, fmt.Sprintf(format, args...)))
	}
	if !recipeName.MatchString(r.Name) {
		bad("", "recipe name %q (the file name): want 1-16 of a-z, 0-9 and -", r.Name)
	}
	if r.Suite == "" {
		bad("suite", "required (bookworm, trixie...)")
	} else if !regexp.MustCompile(`^[a-z][a-z0-9-]*$`).MatchString(r.Suite) {
		bad("suite", "bad suite name %q", r.Suite)
	}
	if len(r.Architectures) == 0 {
		bad("architectures", "required: one or more of amd64, arm64, armhf")
	}
	for i, a := range r.Architectures {
		if _, ok := Arches[a]; !ok {
			bad(fmt.Sprintf("architectures[%d]", i), "unknown architecture %q (want amd64, arm64 or armhf)", a)
		}
	}
	if !slices.Contains(Variants, r.Variant) {
		bad("variant", "%q: want one of %s", r.Variant, strings.Join(Variants, ", "))
	}
	if len(r.Mirrors) == 0 {
		bad("mirrors", "required: apt sources lines, \"deb URI SUITE COMPONENT...\"")
	}
	for i, m := range r.Mirrors {
		f := strings.Fields(m)
		if len(f) < 4 || f[0] != "deb" || strings.ContainsAny(m, "\n'") {
			bad(fmt.Sprintf("mirrors[%d]", i), "%q: want \"deb [OPTIONS] URI SUITE COMPONENT...\" on one line", m)
		}
	}
	seen := map[string]bool{}
	for i, p := range r.Packages {
		if !packageName.MatchString(p) {
			bad(fmt.Sprintf("packages[%d]", i), "%q: want a Debian package name, optionally =VERSION", p)
		}
		if seen[p] {
			bad(fmt.Sprintf("packages[%d]", i), "%q listed twice", p)
		}
		seen[p] = true
	}
	// 2000-01-01 to 2100-01-01: catches milliseconds and typos.
	if r.SourceDateEpoch < 946684800 || r.SourceDateEpoch > 4102444800 {
		bad("source_date_epoch", "%d: want seconds since 1970 between 2000 and 2100 (date +%%s -d 2025-01-01T00:00:00Z)", r.SourceDateEpoch)
	}
	if !hostName.MatchString(r.Hostname) {
		bad("hostname", "%q: want a lowercase host name", r.Hostname)
	}
	if r.Size < 64<<20 {
		bad("size", "%d bytes: want at least 64MiB", r.Size)
	}
	if r.RootPassword != "locked" && r.RootPassword != "empty" {
		bad("root_password", "%q: want locked or empty", r.RootPassword)
	}
	paths := map[string]int{}
	for i := range r.Files {
		f := &r.Files[i]
		fp := fmt.Sprintf("files[%d]", i)
		if f.Type == "" {
			f.Type = "file"
		}
		if f.Owner == "" {
			f.Owner = "root:root"
		}
		if f.Mode == 0 {
			f.Mode = 0o644
			if f.Type == "dir" {
				f.Mode = 0o755
			}
		}
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			bad(fp+".path", "%q: want a clean absolute path inside the root", f.Path)
		}
		if j, dup := paths[f.Path]; dup {
			bad(fp+".path", "%q also at files[%d]", f.Path, j)
		}
		paths[f.Path] = i
		if !ownerSpec.MatchString(f.Owner) {
			bad(fp+".owner", "%q: want USER:GROUP", f.Owner)
		}
		switch f.Type {
		case "file":
			if (f.Source == "") == (f.Content == "") {
				bad(fp, "a file needs exactly one of source and content")
			}
			if f.Target != "" {
				bad(fp+".target", "only for symlinks")
			}
			if f.Source != "" {
				if filepath.IsAbs(f.Source) || strings.HasPrefix(filepath.Clean(f.Source), "..") {
					bad(fp+".source", "%q: want a path relative to the recipe's directory, inside it", f.Source)
				} else if st, err := os.Stat(filepath.Join(r.dir, f.Source)); err != nil {
					bad(fp+".source", "%v", err)
				} else if !st.Mode().IsRegular() {
					bad(fp+".source", "%s is not a regular file", f.Source)
				}
			}
		case "dir":
			if f.Source != "" || f.Content != "" || f.Target != "" {
				bad(fp, "a dir takes no source, content or target")
			}
		case "symlink":
			if f.Target == "" || f.Source != "" || f.Content != "" {
				bad(fp, "a symlink needs a target and no source or content")
			}
		default:
			bad(fp+".type", "%q: want file, dir or symlink", f.Type)
		}
	}
	for _, l := range []struct {
		name  string
		units []string
	}{{"enable", r.Services.Enable}, {"disable", r.Services.Disable}, {"mask", r.Services.Mask}} {
		for i, u := range l.units {
			if !unitName.MatchString(u) {
				bad(fmt.Sprintf("services.%s[%d]", l.name, i), "%q: want a unit name with its suffix (ssh.service)", u)
			}
		}
	}
	return errors.Join(errs...)
}

// Supports reports whether the recipe lists arch.
func (r *Recipe) Supports(arch string) bool { return slices.Contains(r.Architectures, arch) }

// FileContent returns the content of f, a file of r.
func (r *Recipe) FileContent(f File) ([]byte, error) {
	if f.Source == "" {
		return []byte(f.Content), nil
	}
	b, err := os.ReadFile(filepath.Join(r.dir, f.Source))
	if err != nil {
		return nil, fmt.Errorf("reading %s for %s: %w", f.Source, f.Path, err)
	}
	return b, nil
}

// Hash is the recipe's identity: a SHA-256 over its decoded fields (so
// comments and formatting don't count) and the content of every file it
// adds. The file system UUID and hash seed derive from it.
func (r *Recipe) Hash() (string, error) {
	h := sha256.New()
	enc, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	h.Write(enc)
	for _, f := range r.Files {
		b, err := r.FileContent(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "\x00%s\x00%d\x00", f.Path, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Epoch returns SOURCE_DATE_EPOCH as a time.
func (r *Recipe) Epoch() time.Time { return time.Unix(r.SourceDateEpoch, 0).UTC() }

// deriveUUID returns a UUID (RFC 9562 version 8, for custom data) made
// from the recipe hash, the architecture and a purpose, so that every
// image of a recipe and arch gets the same file system UUID and hash seed
// and different recipes or arches get different ones.
func deriveUUID(recipeHash, arch, purpose string) string {
	s := sha256.Sum256([]byte("rackboot-rootfs\x00" + purpose + "\x00" + arch + "\x00" + recipeHash))
	b := s[:16]
	b[6] = b[6]&0x0f | 0x80 // version 8
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	x := hex.EncodeToString(b)
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}
