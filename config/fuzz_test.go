package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/rackboot.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(example),
		"",
		"state_dir: /s\n",
		"state_dir: /s\nnbd: {listen: \"[::1]:0\", drain_timeout: 1ms, max_connections: 1}\n",
		"state_dir: s\nimages:\n  - {name: a, path: a}\n  - {name: a, path: b}\n",
		"state_dir: /s\nimages:\n  - &i {name: a, path: /a}\n  - *i\n",
		"state_dir: /s\n---\nstate_dir: /t\n",
		"nbd:\n  lisen: :1\n  max_connections: 0\n",
		"state_dir: [/s]\nimages: {a: b}\n",
		"? [a]\n: b\n",
	} {
		f.Add([]byte(seed))
	}
	const dir = "/etc/rackboot"
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			t.Skip("input larger than 64 KiB")
		}
		c, err := Parse("f.yaml", data, dir)
		if err != nil {
			if c != nil {
				t.Errorf("Parse(%q) = %+v, %v; want nil Config on error", data, c, err)
			}
			for line := range strings.Lines(err.Error()) {
				if !strings.HasPrefix(line, "f.yaml") {
					t.Errorf("Parse(%q) error line %q; want prefix %q", data, line, "f.yaml")
				}
			}
			return
		}
		if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
			t.Errorf("Parse(%q).StateDir = %q; want an absolute path", data, c.StateDir)
		}
		if _, err := parseLevel(c.LogLevel); err != nil {
			t.Errorf("Parse(%q).LogLevel: %v", data, err)
		}
		if err := checkListen(c.NBD.Listen); err != nil {
			t.Errorf("Parse(%q).NBD.Listen: %v", data, err)
		}
		if c.NBD.DrainTimeout <= 0 {
			t.Errorf("Parse(%q).NBD.DrainTimeout = %v; want > 0", data, c.NBD.DrainTimeout)
		}
		if c.NBD.MaxConnections < 1 {
			t.Errorf("Parse(%q).NBD.MaxConnections = %d; want >= 1", data, c.NBD.MaxConnections)
		}
		seen := map[string]bool{}
		for i, img := range c.Images {
			if !imageName.MatchString(img.Name) || strings.Contains(img.Name, "@") {
				t.Errorf("Parse(%q).Images[%d].Name = %q; want a valid name", data, i, img.Name)
			}
			if seen[img.Name] {
				t.Errorf("Parse(%q).Images[%d].Name = %q; want unique names", data, i, img.Name)
			}
			seen[img.Name] = true
			if !filepath.IsAbs(img.Path) {
				t.Errorf("Parse(%q).Images[%d].Path = %q; want an absolute path", data, i, img.Path)
			}
		}
		for path, line := range c.lines {
			if line < 1 {
				t.Errorf("Parse(%q) recorded line %d for %s; want >= 1", data, line, path)
			}
		}
	})
}
