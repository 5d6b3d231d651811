package kmod

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Aliases is a modules.alias file (depmod's): which modules claim which
// device modaliases ("pci:v00001AF4d00001000sv*sd*bc*sc*i*") and which
// names ("crc32c", "crypto-crc32c"). Hardware is matched the way udev and
// modprobe do it: a device's modalias (/sys/bus/*/devices/*/modalias)
// against the patterns, fnmatch style. Its methods are safe for concurrent
// use.
type Aliases struct {
	// byBus holds the rules whose literal start names the bus ("pci:",
	// "of:"), by that bus; other holds the rest ("acpi*:...").
	byBus map[string][]aliasRule
	other []aliasRule
}

type aliasRule struct {
	pattern string
	prefix  string // the literal start of pattern, before any wildcard
	module  string
}

// bus is the part of a modalias or a pattern's literal prefix before the
// first ':', and whether there is one.
func bus(s string) (string, bool) {
	b, _, ok := strings.Cut(s, ":")
	return b, ok
}

// ReadAliases reads root/lib/modules/RELEASE/modules.alias. A missing file
// wraps fs.ErrNotExist.
func ReadAliases(root, release string) (*Aliases, error) {
	b, err := os.ReadFile(filepath.Join(root, "lib/modules", release, "modules.alias"))
	if err != nil {
		return nil, fmt.Errorf("reading modules.alias: %w", err)
	}
	return ParseAliases(b)
}

// ParseAliases parses modules.alias: "alias PATTERN MODULE" lines and
// comments.
func ParseAliases(b []byte) (*Aliases, error) {
	a := &Aliases{byBus: map[string][]aliasRule{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" {
			return nil, fmt.Errorf("modules.alias: bad line %q", line)
		}
		p := f[1]
		r := aliasRule{pattern: p, prefix: p[:literalLen(p)], module: f[2]}
		if b, ok := bus(r.prefix); ok {
			a.byBus[b] = append(a.byBus[b], r)
		} else {
			a.other = append(a.other, r)
		}
	}
	return a, sc.Err()
}

func literalLen(p string) int {
	if i := strings.IndexAny(p, "*?[\\"); i >= 0 {
		return i
	}
	return len(p)
}

// Match returns the modules whose aliases match name (a modalias or a
// name such as "crc32c"), sorted, without duplicates.
func (a *Aliases) Match(name string) []string {
	var out []string
	match := func(rules []aliasRule) {
		for _, r := range rules {
			if strings.HasPrefix(name, r.prefix) && fnmatch(r.pattern, name) && !slices.Contains(out, r.module) {
				out = append(out, r.module)
			}
		}
	}
	if b, ok := bus(name); ok {
		match(a.byBus[b])
	}
	match(a.other)
	slices.Sort(out)
	return out
}

// fnmatch reports whether s matches the shell pattern p: * and ? match
// any character (including '/'), [...] a class with ranges and ! or ^
// negation, and \ quotes. A malformed class matches literally.
func fnmatch(p, s string) bool {
	// Iterative, backtracking to the last star only: linear in practice.
	var starP, starS = -1, 0
	pi, si := 0, 0
	for si < len(s) {
		if pi < len(p) {
			switch c := p[pi]; c {
			case '*':
				starP, starS = pi, si
				pi++
				continue
			case '?':
				pi++
				si++
				continue
			case '[':
				if n, ok := matchClass(p[pi:], s[si]); n > 0 {
					if ok {
						pi += n
						si++
						continue
					}
				} else if s[si] == '[' {
					pi++
					si++
					continue
				}
			case '\\':
				if pi+1 < len(p) && p[pi+1] == s[si] {
					pi += 2
					si++
					continue
				}
			default:
				if c == s[si] {
					pi++
					si++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starS++
		pi, si = starP+1, starS
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// matchClass matches c against the class at the start of p ("[...]") and
// returns the class's length, or 0 if p holds no well-formed class.
func matchClass(p string, c byte) (int, bool) {
	i := 1
	neg := false
	if i < len(p) && (p[i] == '!' || p[i] == '^') {
		neg = true
		i++
	}
	matched := false
	first := true
	for i < len(p) && (p[i] != ']' || first) {
		first = false
		lo := p[i]
		hi := lo
		if i+2 < len(p) && p[i+1] == '-' && p[i+2] != ']' {
			hi = p[i+2]
			i += 2
		}
		if lo <= c && c <= hi {
			matched = true
		}
		i++
	}
	if i >= len(p) {
		return 0, false
	}
	return i + 1, matched != neg
}

// Modaliases returns the modaliases of the devices under sys
// (sys/bus/*/devices/*/modalias), sorted, without duplicates. Devices
// without one are skipped.
func Modaliases(sys string) ([]string, error) {
	var d devices
	return d.scan(sys)
}

// devices finds the modaliases of devices not seen before: drivers add
// devices as they load, and reading every modalias again after each
// module costs ~0.2 s under emulation on a machine with many platform
// devices. The zero value is ready to use; it is not safe for concurrent
// use.
type devices struct {
	seen map[string]bool // sys/bus/BUS/devices/DEV
}

// scan returns the sorted, distinct modaliases of the devices that
// appeared since the last scan.
func (d *devices) scan(sys string) ([]string, error) {
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	buses, err := os.ReadDir(filepath.Join(sys, "bus"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, bus := range buses {
		dir := filepath.Join(sys, "bus", bus.Name(), "devices")
		devs, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, dev := range devs {
			p := filepath.Join(dir, dev.Name())
			if d.seen[p] {
				continue
			}
			d.seen[p] = true
			b, err := os.ReadFile(filepath.Join(p, "modalias"))
			if errors.Is(err, fs.ErrNotExist) || len(b) == 0 {
				continue
			}
			if err != nil {
				continue // some attributes refuse reads; udev skips them too
			}
			if m := strings.TrimSpace(string(b)); m != "" {
				out = append(out, m)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
