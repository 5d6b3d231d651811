package config

import (
	"errors"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// withDefaults returns a Config with the defaults and the given state_dir
// and images, as Parse would return it.
func withDefaults(stateDir string, images ...Image) *Config {
	c := defaults()
	c.StateDir = stateDir
	c.Images = images
	return c
}

var ignoreUnexported = cmp.Options{cmpopts.IgnoreUnexported(Config{}), cmpopts.EquateComparable(netip.Addr{})}

func TestParse(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		in   string
		dir  string
		want *Config
	}{
		"minimal": {
			in:   "state_dir: /s\n",
			want: withDefaults("/s"),
		},
		"null values keep defaults": {
			in:   "state_dir: /s\nlog_level:\nnbd: ~\nimages:\n",
			want: withDefaults("/s"),
		},
		"null nested values keep defaults": {
			in:   "state_dir: /s\nnbd:\n  listen:\n  drain_timeout: null\n",
			want: withDefaults("/s"),
		},
		"empty images": {
			in:   "state_dir: /s\nimages: []\n",
			want: withDefaults("/s", []Image{}...),
		},
		"all fields": {
			in: `state_dir: /var/lib/rackboot
log_level: debug
nbd:
  listen: 127.0.0.1:0
  drain_timeout: 1m30s
  max_connections: 1_000
images:
  - name: minimal
    path: /srv/minimal.img
  - {name: Debian-12.5_arm64, path: /srv/debian.img}
`,
			want: func() *Config {
				c := withDefaults("/var/lib/rackboot",
					Image{Name: "minimal", Path: "/srv/minimal.img"},
					Image{Name: "Debian-12.5_arm64", Path: "/srv/debian.img"})
				c.LogLevel = "debug"
				c.NBD = NBD{Listen: "127.0.0.1:0", DrainTimeout: 90 * time.Second, MaxConnections: 1000, MaxConnectionsPerPeer: DefaultMaxConnectionsPerPeer}
				return c
			}(),
		},
		"IPv6 listen and hex integer": {
			in: "state_dir: /s\nnbd: {listen: \"[::1]:10809\", max_connections: 0x10}\n",
			want: func() *Config {
				c := withDefaults("/s")
				c.NBD = NBD{Listen: "[::1]:10809", DrainTimeout: DefaultDrainTimeout, MaxConnections: 16, MaxConnectionsPerPeer: DefaultMaxConnectionsPerPeer}
				return c
			}(),
		},
		"numeric image name": {
			in:   "state_dir: /s\nimages:\n  - name: 2024\n    path: /a\n",
			want: withDefaults("/s", Image{Name: "2024", Path: "/a"}),
		},
		"anchor without alias": {
			in:   "state_dir: &sd /s\n",
			want: withDefaults("/s"),
		},
		"document markers": {
			in:   "---\nstate_dir: /s\n...\n",
			want: withDefaults("/s"),
		},
		"relative paths resolve against dir": {
			in:   "state_dir: state\nimages:\n  - {name: a, path: img/a.img}\n  - {name: b, path: ../b.img}\n  - {name: c, path: /srv//x/../c.img}\n",
			dir:  "/etc/rackboot",
			want: withDefaults("/etc/rackboot/state", Image{"a", "/etc/rackboot/img/a.img"}, Image{"b", "/etc/b.img"}, Image{"c", "/srv/c.img"}),
		},
		"relative paths stay relative without dir": {
			in:   "state_dir: state\nimages:\n  - {name: a, path: ./img/a.img}\n",
			want: withDefaults("state", Image{"a", "img/a.img"}),
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse("t.yaml", []byte(tt.in), tt.dir)
			if err != nil {
				t.Fatalf("Parse(%q) error = %v; want nil", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got, ignoreUnexported); diff != "" {
				t.Errorf("Parse(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		in   string
		want []string // each error line, in order
	}{
		"empty file": {
			in:   "",
			want: []string{"t.yaml: state_dir: required"},
		},
		"boards": {
			in: `state_dir: /s
images: [{name: min, path: /m}]
dhcp: {mode: full, interfaces: [eth1], range_start: 10.0.0.100, range_end: 10.0.0.50}
boot:
  tree: /b
  kernels: {amd64: {kernel: k}, sparc: {kernel: k, initrd: i}}
  unknown_boards: boot-them-all
boards:
  - {name: a, mac: "52:54:00:00:00:01", arch: amd64, image: min}
  - {name: a, mac: "52-54-00-00-00-01", arch: arm64, image: min, ip: 10.0.0.60}
  - {name: "b c", mac: nonsense, arch: amd64, image: min, ip: 10.0.0.60, build_disk: "by-uuid:x"}
  - {mac: "52:54:00:00:00:03", image: min}
`,
			want: []string{
				"t.yaml:3: dhcp.range_end: 10.0.0.50 is below range_start 10.0.0.100",
				`t.yaml:6: boot.kernels["amd64"].initrd: required`,
				`t.yaml:6: boot.kernels["sparc"]: unknown architecture "sparc" (want amd64, arm64, armhf)`,
				`t.yaml:7: boot.unknown_boards: invalid policy "boot-them-all" (want ignore or identify)`,
				`t.yaml:10: boards[1].name: duplicate board name "a" (first at line 9)`,
				"t.yaml:10: boards[1].mac: MAC 52:54:00:00:00:01 already belongs to the board at line 9",
				"t.yaml:10: boards[1].arch: no boot.kernels entry for arm64",
				`t.yaml:11: boards[2].name: invalid board name "b c": want 1-63 of [A-Za-z0-9._-], starting with a letter or digit`,
				`t.yaml:11: boards[2].mac: invalid MAC "nonsense" (want six hex pairs like 52:54:00:12:34:56)`,
				"t.yaml:11: boards[2].ip: address 10.0.0.60 already belongs to the board at line 10",
				`t.yaml:11: boards[2].build_disk: invalid selector "by-uuid:x" (want largest, none, by-id:NAME, or serial:SERIAL)`,
				"t.yaml:12: boards[3].name: required",
				"t.yaml:12: boards[3].arch: required",
			},
		},
		"build disks the initramfs can't name": {
			in: `state_dir: /s
images: [{name: min, path: /m}]
boot: {tree: /b, kernels: {amd64: {kernel: k, initrd: i}}}
boards:
  - {name: a, mac: "52:54:00:00:00:01", arch: amd64, image: min, build_disk: "by-path:pci-0000:00:1f.2-ata-1"}
  - {name: b, mac: "52:54:00:00:00:02", arch: amd64, image: min, build_disk: "by-id:ata-WDC_WD40_XYZ"}
  - {name: c, mac: "52:54:00:00:00:03", arch: amd64, image: min, build_disk: "by-id:/dev/disk/by-id/nvme-Samsung_SSD_S4EW"}
  - {name: d, mac: "52:54:00:00:00:04", arch: amd64, image: min, build_disk: "serial:WD-WX12"}
`,
			want: []string{
				`t.yaml:5: boards[0].build_disk: "by-path:pci-0000:00:1f.2-ata-1": the board's initramfs has no udev, so no by-path names; use serial:SERIAL or by-id:NAME`,
				`t.yaml:6: boards[1].build_disk: "by-id:ata-WDC_WD40_XYZ": the board's initramfs has no udev and names only virtio-, nvme- and mmc- disks by id; use serial:SERIAL`,
			},
		},
		"full mode on two interfaces": {
			in:   "state_dir: /s\ndhcp: {mode: full, interfaces: [eth1, eth2], range_start: 10.0.0.100, range_end: 10.0.0.150}\n",
			want: []string{"t.yaml:2: dhcp.interfaces: full mode serves one interface, not 2 (run one rackboot per boot network, or proxy mode)"},
		},
		"conflict check too long": {
			in:   "state_dir: /s\ndhcp: {mode: full, interfaces: [eth1], range_start: 10.0.0.100, range_end: 10.0.0.150, conflict_check: 3s}\n",
			want: []string{"t.yaml:2: dhcp.conflict_check: must be between 0 (off) and 1s, got 3s"},
		},
		"dhcp needs interfaces": {
			in:   "state_dir: /s\ndhcp: {mode: proxy}\n",
			want: []string{"t.yaml:2: dhcp.interfaces: required in proxy mode"},
		},
		"bad address": {
			in:   "state_dir: /s\naddress: 10.0.0\n",
			want: []string{`t.yaml:2: address: invalid value "10.0.0": ParseAddr("10.0.0"): IPv4 address too short`},
		},
		"only comments": {
			in:   "# nothing\n",
			want: []string{"t.yaml: state_dir: required"},
		},
		"null document": {
			in:   "---\n",
			want: []string{"t.yaml: state_dir: required"},
		},
		"syntax error": {
			in:   "state_dir: /s\nnbd:\n  listen: a: b\n",
			want: []string{"t.yaml:3: mapping values are not allowed in this context"},
		},
		"syntax error without line": {
			in:   "state_dir: *nope\n",
			want: []string{"t.yaml: unknown anchor 'nope' referenced"},
		},
		"multiple documents": {
			in:   "state_dir: /s\n---\nlog_level: info\n",
			want: []string{"t.yaml:2: multiple YAML documents; want one"},
		},
		"syntax error in second document": {
			in:   "state_dir: /s\n---\nx: [\n",
			want: []string{"t.yaml:3: did not find expected node content"},
		},
		"root is a list": {
			in:   "- state_dir: /s\n",
			want: []string{"t.yaml:1: want a mapping, got a list"},
		},
		"root is a scalar": {
			in:   "\n/s\n",
			want: []string{`t.yaml:2: want a mapping, got string "/s"`},
		},
		"unknown top-level field": {
			in:   "state_dir: /s\nstatedir: /t\n",
			want: []string{"t.yaml:2: statedir: unknown field (known: state_dir, log_level, nbd, images, address, dhcp, tftp, http, boot, boards)"},
		},
		"unknown nested field": {
			in:   "state_dir: /s\nnbd:\n  lisen: :1\n",
			want: []string{"t.yaml:3: nbd.lisen: unknown field (known: listen, drain_timeout, max_connections, max_connections_per_peer)"},
		},
		"unknown field with odd name": {
			in:   "state_dir: /s\n\"a\\nb\": 1\n",
			want: []string{`t.yaml:2: ["a\nb"]: unknown field (known: state_dir, log_level, nbd, images, address, dhcp, tftp, http, boot, boards)`},
		},
		"unknown field in list item": {
			in:   "state_dir: /s\nimages:\n  - name: a\n    path: /a\n    size: 3\n",
			want: []string{"t.yaml:5: images[0].size: unknown field (known: name, path)"},
		},
		"duplicate key": {
			in:   "state_dir: /s\nlog_level: info\nstate_dir: /t\n",
			want: []string{"t.yaml:3: state_dir: duplicate key (first at line 1)"},
		},
		"duplicate nested key": {
			in:   "state_dir: /s\nnbd:\n  listen: :1\n\n  listen: :2\n",
			want: []string{"t.yaml:5: nbd.listen: duplicate key (first at line 3)"},
		},
		"non-string key": {
			in:   "state_dir: /s\n? [a]\n: b\n",
			want: []string{"t.yaml:2: want a string key, got a list"},
		},
		"mapping expected": {
			in:   "state_dir: /s\nnbd:\n  - listen: :1\n",
			want: []string{"t.yaml:2: nbd: want a mapping, got a list"},
		},
		"list expected": {
			in:   "state_dir: /s\nimages:\n  name: a\n",
			want: []string{"t.yaml:2: images: want a list, got a mapping"},
		},
		"list item not a mapping": {
			in:   "state_dir: /s\nimages:\n  - {name: a, path: /a}\n  - b\n",
			want: []string{`t.yaml:4: images[1]: want a mapping, got string "b"`},
		},
		"string expected": {
			in:   "state_dir:\n  - /s\n",
			want: []string{"t.yaml:1: state_dir: want a string, got a list"},
		},
		"integer expected, got quoted string": {
			in:   "state_dir: /s\nnbd:\n  max_connections: \"10\"\n",
			want: []string{`t.yaml:3: nbd.max_connections: want an integer, got string "10"`},
		},
		"integer expected, got float": {
			in:   "state_dir: /s\nnbd:\n  max_connections: 1.5\n",
			want: []string{`t.yaml:3: nbd.max_connections: want an integer, got number "1.5"`},
		},
		"integer overflow": {
			in:   "state_dir: /s\nnbd:\n  max_connections: 99999999999999999999\n",
			want: []string{"t.yaml:3: nbd.max_connections: 99999999999999999999 out of range for int"},
		},
		"duration expected, got integer": {
			in:   "state_dir: /s\nnbd:\n  drain_timeout: 30\n",
			want: []string{`t.yaml:3: nbd.drain_timeout: want a duration like "30s", got integer "30"`},
		},
		"invalid duration": {
			in:   "state_dir: /s\nnbd:\n  drain_timeout: 30 parsecs\n",
			want: []string{`t.yaml:3: nbd.drain_timeout: invalid duration "30 parsecs" (want a number with a unit, like "30s" or "1m30s")`},
		},
		"alias": {
			in:   "state_dir: /s\nimages:\n  - &img {name: a, path: /a}\n  - *img\n",
			want: []string{"t.yaml:4: images[1]: YAML aliases are not supported"},
		},
		"missing state_dir": {
			in:   "log_level: info\n",
			want: []string{"t.yaml: state_dir: required"},
		},
		"null state_dir": {
			in:   "log_level: info\nstate_dir:\n",
			want: []string{"t.yaml:2: state_dir: required"},
		},
		"empty state_dir": {
			in:   "state_dir: ''\n",
			want: []string{"t.yaml:1: state_dir: required"},
		},
		"invalid log level": {
			in:   "state_dir: /s\nlog_level: INFO\n",
			want: []string{`t.yaml:2: log_level: invalid log level "INFO" (want debug, info, warn or error)`},
		},
		"listen without port": {
			in:   "state_dir: /s\nnbd:\n  listen: foo\n",
			want: []string{`t.yaml:3: nbd.listen: invalid host:port "foo": missing port in address`},
		},
		"listen with service name": {
			in:   "state_dir: /s\nnbd:\n  listen: foo:bar\n",
			want: []string{`t.yaml:3: nbd.listen: invalid host:port "foo:bar": port must be a number from 0 to 65535`},
		},
		"listen port out of range": {
			in:   "state_dir: /s\nnbd:\n  listen: :65536\n",
			want: []string{`t.yaml:3: nbd.listen: invalid host:port ":65536": port must be a number from 0 to 65535`},
		},
		"listen empty": {
			in:   "state_dir: /s\nnbd:\n  listen: ''\n",
			want: []string{`t.yaml:3: nbd.listen: invalid host:port "": missing port in address`},
		},
		"zero drain timeout": {
			in:   "state_dir: /s\nnbd:\n  drain_timeout: 0s\n",
			want: []string{"t.yaml:3: nbd.drain_timeout: must be positive, got 0s"},
		},
		"negative drain timeout": {
			in:   "state_dir: /s\nnbd:\n  drain_timeout: -1s\n",
			want: []string{"t.yaml:3: nbd.drain_timeout: must be positive, got -1s"},
		},
		"zero max connections": {
			in:   "state_dir: /s\nnbd:\n  max_connections: 0\n",
			want: []string{"t.yaml:3: nbd.max_connections: must be at least 1, got 0"},
		},
		"image without name": {
			in:   "state_dir: /s\nimages:\n  - path: /a\n",
			want: []string{"t.yaml:3: images[0].name: required"},
		},
		"image without path": {
			in:   "state_dir: /s\nimages:\n  - {name: a, path: /a}\n  -\n    name: b\n",
			want: []string{"t.yaml:5: images[1].path: required"},
		},
		"image with null path": {
			in:   "state_dir: /s\nimages:\n  - name: a\n    path:\n",
			want: []string{"t.yaml:4: images[0].path: required"},
		},
		"image name with @": {
			in:   "state_dir: /s\nimages:\n  - {name: a@b, path: /a}\n",
			want: []string{`t.yaml:3: images[0].name: invalid image name "a@b": '@' is reserved for NAME@SESSION export names`},
		},
		"image name with space": {
			in:   "state_dir: /s\nimages:\n  - {name: a b, path: /a}\n",
			want: []string{`t.yaml:3: images[0].name: invalid image name "a b": want 1-64 of [A-Za-z0-9._-], starting with a letter or digit`},
		},
		"image name starting with dot": {
			in:   "state_dir: /s\nimages:\n  - {name: .a, path: /a}\n",
			want: []string{`t.yaml:3: images[0].name: invalid image name ".a": want 1-64 of [A-Za-z0-9._-], starting with a letter or digit`},
		},
		"image name too long": {
			in:   "state_dir: /s\nimages:\n  - {name: " + strings.Repeat("a", 65) + ", path: /a}\n",
			want: []string{`t.yaml:3: images[0].name: invalid image name "` + strings.Repeat("a", 65) + `": want 1-64 of [A-Za-z0-9._-], starting with a letter or digit`},
		},
		"duplicate image name": {
			in: `state_dir: /s
images:
  - name: minimal
    path: /a
  - name: other
    path: /b
  - path: /c
    name: minimal
`,
			want: []string{`t.yaml:8: images[2].name: duplicate image name "minimal" (first at line 3)`},
		},
		"no validation errors for fields that failed to decode": {
			in:   "state_dir: [/s]\nimages:\n  - name: [a]\n    path: /a\n  - [b]\n",
			want: []string{"t.yaml:1: state_dir: want a string, got a list", "t.yaml:3: images[0].name: want a string, got a list", "t.yaml:5: images[1]: want a mapping, got a list"},
		},
		"sibling validation still runs after unknown field": {
			in:   "nbd:\n  lisen: :1\n  max_connections: 0\n",
			want: []string{"t.yaml: state_dir: required", "t.yaml:2: nbd.lisen: unknown field (known: listen, drain_timeout, max_connections, max_connections_per_peer)", "t.yaml:3: nbd.max_connections: must be at least 1, got 0"},
		},
		"all errors sorted by line": {
			in: `images:
  - name: a@b
    path: /a
log_level: loud
nbd:
  listen: foo:bar
  drain_timeout: 0s
  max_connections: -1
  extra: 1
images: []
`,
			want: []string{
				"t.yaml: state_dir: required",
				`t.yaml:2: images[0].name: invalid image name "a@b": '@' is reserved for NAME@SESSION export names`,
				`t.yaml:4: log_level: invalid log level "loud" (want debug, info, warn or error)`,
				`t.yaml:6: nbd.listen: invalid host:port "foo:bar": port must be a number from 0 to 65535`,
				"t.yaml:7: nbd.drain_timeout: must be positive, got 0s",
				"t.yaml:8: nbd.max_connections: must be at least 1, got -1",
				"t.yaml:9: nbd.extra: unknown field (known: listen, drain_timeout, max_connections, max_connections_per_peer)",
				"t.yaml:10: images: duplicate key (first at line 1)",
			},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse("t.yaml", []byte(tt.in), "/etc")
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, nil; want errors %q", tt.in, got, tt.want)
			}
			if got != nil {
				t.Errorf("Parse(%q) = %+v, %v; want nil Config on error", tt.in, got, err)
			}
			if diff := cmp.Diff(tt.want, strings.Split(err.Error(), "\n")); diff != "" {
				t.Errorf("Parse(%q) error mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseLines(t *testing.T) {
	t.Parallel()
	in := `# comment
state_dir: /s
nbd:
  listen: :1
images:
  - name: a
    path: /a
  -
    name: b
    path: /b
`
	c, err := Parse("t.yaml", []byte(in), "")
	if err != nil {
		t.Fatalf("Parse(%q) error = %v; want nil", in, err)
	}
	want := map[string]int{
		"state_dir":      2,
		"nbd":            3,
		"nbd.listen":     4,
		"images":         5,
		"images[0]":      6,
		"images[0].name": 6,
		"images[0].path": 7,
		"images[1]":      9,
		"images[1].name": 9,
		"images[1].path": 10,
	}
	if diff := cmp.Diff(want, c.lines); diff != "" {
		t.Errorf("Parse(%q) lines mismatch (-want +got):\n%s", in, diff)
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "rackboot.yaml")
	in := "state_dir: state\nimages:\n  - {name: a, path: a.img}\n"
	if err := os.WriteFile(path, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%q) error = %v; want nil", path, err)
	}
	want := withDefaults(filepath.Join(dir, "state"), Image{"a", filepath.Join(dir, "a.img")})
	if diff := cmp.Diff(want, got, ignoreUnexported); diff != "" {
		t.Errorf("Load(%q) mismatch (-want +got):\n%s", path, diff)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("state_dir: /s\nnbd:\n  lisen: :1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		path   string
		want   string
		wantIs error
	}{
		"missing file": {
			path:   filepath.Join(dir, "missing.yaml"),
			want:   filepath.Join(dir, "missing.yaml") + ": open: no such file or directory",
			wantIs: fs.ErrNotExist,
		},
		"directory": {
			path: dir,
			want: dir + ": read: is a directory",
		},
		"invalid file": {
			path: bad,
			want: bad + ":3: nbd.lisen: unknown field",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load(%q) error = %v; want substring %q", tt.path, err, tt.want)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Load(%q) error = %v; want errors.Is %v", tt.path, err, tt.wantIs)
			}
		})
	}
}

func TestCheckFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ok.img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "dir.img"), 0o755); err != nil {
		t.Fatal(err)
	}
	in := `state_dir: state
images:
  - name: ok
    path: ok.img
  - name: missing
    path: missing.img
  - name: dir
    path: dir.img
`
	c, err := Parse("t.yaml", []byte(in), dir)
	if err != nil {
		t.Fatalf("Parse(%q) error = %v; want nil", in, err)
	}
	err = c.CheckFiles()
	want := []string{
		"t.yaml:6: images[1].path: stat " + filepath.Join(dir, "missing.img") + ": no such file or directory",
		"t.yaml:8: images[2].path: " + filepath.Join(dir, "dir.img") + " is a directory, not a regular file",
	}
	if err == nil {
		t.Fatalf("CheckFiles() = nil; want %q", want)
	}
	if diff := cmp.Diff(want, strings.Split(err.Error(), "\n")); diff != "" {
		t.Errorf("CheckFiles() error mismatch (-want +got):\n%s", diff)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CheckFiles() = %v; want errors.Is fs.ErrNotExist", err)
	}

	c.Images = c.Images[:1]
	if err := c.CheckFiles(); err != nil {
		t.Errorf("CheckFiles() with only existing files = %v; want nil", err)
	}

	// A Config built by hand has no file name or lines.
	manual := &Config{Images: []Image{{Name: "x", Path: filepath.Join(dir, "nope")}}}
	wantManual := "images[0].path: stat " + filepath.Join(dir, "nope") + ": no such file or directory"
	if err := manual.CheckFiles(); err == nil || err.Error() != wantManual {
		t.Errorf("CheckFiles() on hand-built Config = %v; want %q", err, wantManual)
	}
}

func TestLevel(t *testing.T) {
	t.Parallel()
	tests := map[string]slog.Level{
		"debug": slog.LevelDebug,
		"info":  slog.LevelInfo,
		"warn":  slog.LevelWarn,
		"error": slog.LevelError,
		"":      slog.LevelInfo,
		"bogus": slog.LevelInfo,
	}
	for in, want := range tests {
		c := &Config{LogLevel: in}
		if got := c.Level(); got != want {
			t.Errorf("Config{LogLevel: %q}.Level() = %v; want %v", in, got, want)
		}
	}
}

// TestDocExample checks that the example in the package documentation is
// testdata/rackboot.yaml, and that it is valid.
func TestDocExample(t *testing.T) {
	t.Parallel()
	example, err := os.ReadFile("testdata/rackboot.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var block strings.Builder
	for line := range strings.Lines(string(example)) {
		if line == "\n" {
			block.WriteString("//\n")
		} else {
			block.WriteString("//\t" + line)
		}
	}
	if !strings.Contains(string(doc), block.String()) {
		t.Errorf("doc.go does not contain testdata/rackboot.yaml as a code block; want:\n%s", block.String())
	}
	if _, err := Parse("rackboot.yaml", example, "/etc/rackboot"); err != nil {
		t.Errorf("Parse(testdata/rackboot.yaml) error = %v; want nil", err)
	}
}
