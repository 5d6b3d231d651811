package rootfs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestShippedRecipes loads every recipe in recipes/.
func TestShippedRecipes(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("recipes/*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("recipes: %v, %v", files, err)
	}
	for _, f := range files {
		r, err := Load(f)
		if err != nil {
			t.Errorf("Load(%s): %v", f, err)
			continue
		}
		for _, arch := range []string{"amd64", "arm64", "armhf"} {
			if !r.Supports(arch) {
				t.Errorf("%s does not list %s", f, arch)
			}
		}
		if !r.Agent {
			t.Errorf("%s: agent: false; every shipped image carries the agent", f)
		}
		for _, u := range []string{"systemd-networkd.service", "systemd-firstboot.service"} {
			if !slicesContains(r.Services.Mask, u) {
				t.Errorf("%s does not mask %s", f, u)
			}
		}
		h1, err := r.Hash()
		if err != nil {
			t.Fatal(err)
		}
		r2, _ := Load(f)
		if h2, _ := r2.Hash(); h1 != h2 {
			t.Errorf("%s: Hash not stable: %s, %s", f, h1, h2)
		}
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

const validRecipe = `suite: bookworm
architectures: [amd64]
variant: minbase
mirrors: ["deb http://deb.debian.org/debian bookworm main"]
source_date_epoch: 1735689600
`

func TestParseDefaults(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "motd"), []byte("hello\n"), 0o644)
	r, err := Parse(filepath.Join(dir, "tiny.yaml"), []byte(validRecipe+`files:
  - {path: /etc/motd, source: motd}
  - {path: /etc/issue, content: "x\n", mode: 0600, owner: root:adm}
  - {path: /srv/data, type: dir}
  - {path: /etc/localtime, type: symlink, target: /usr/share/zoneinfo/UTC}
  - {path: /usr/local/bin/tool, content: "#!/bin/sh\n", mode: "4755"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "tiny" || r.Hostname != DefaultHostname || r.Size != DefaultSize || r.RootPassword != DefaultRootPassword {
		t.Errorf("defaults: name %q hostname %q size %d root_password %q", r.Name, r.Hostname, r.Size, r.RootPassword)
	}
	type fm struct {
		Type  string
		Mode  Mode
		Owner string
	}
	var got []fm
	for _, f := range r.Files {
		got = append(got, fm{f.Type, f.Mode, f.Owner})
	}
	want := []fm{{"file", 0o644, "root:root"}, {"file", 0o600, "root:adm"}, {"dir", 0o755, "root:root"}, {"symlink", 0o644, "root:root"}, {"file", 0o4755, "root:root"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	if got := fileMode(r.Files[4].Mode); got != os.ModeSetuid|0o755 {
		t.Errorf("fileMode(4755) = %v", got)
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "present"), []byte("x"), 0o644)
	tests := map[string]struct {
		yaml string
		// errs are regular expressions, each matching one line of the
		// error.
		errs []string
	}{
		"empty":              {"", []string{`r\.yaml: empty recipe`}},
		"syntax":             {"suite: [bookworm\n", []string{`r\.yaml: line \d+: did not find expected`}},
		"not a mapping":      {"- a\n- b\n", []string{`cannot unmarshal`}},
		"unknown field":      {validRecipe + "sutie: trixie\n", []string{`r\.yaml:6: sutie: unknown field \(known: description, suite, `}},
		"unknown file field": {validRecipe + "files:\n  - {path: /etc/x, content: x, perm: \"0644\"}\n", []string{`r\.yaml:7: files\[0\]\.perm: unknown field`}},
		"duplicate key":      {validRecipe + "suite: trixie\n", []string{`r\.yaml:6: suite: duplicate key \(first at line 1\)|already defined at line 1`}},
		"missing required": {"description: x\n", []string{
			`suite: required`, `architectures: required`, `variant: "": want one of`, `mirrors: required`, `source_date_epoch: 0: want seconds`,
		}},
		"bad arch":          {strings.Replace(validRecipe, "[amd64]", "[amd64, i386]", 1), []string{`r\.yaml:2: architectures\[1\]: unknown architecture "i386"`}},
		"bad variant":       {strings.Replace(validRecipe, "minbase", "tiny", 1), []string{`r\.yaml:3: variant: "tiny": want one of`}},
		"bad mirror":        {strings.Replace(validRecipe, `"deb http://deb.debian.org/debian bookworm main"`, `"http://deb.debian.org/debian"`, 1), []string{`mirrors\[0\]: "http://deb.debian.org/debian": want "deb`}},
		"milliseconds":      {strings.Replace(validRecipe, "1735689600", "1735689600000", 1), []string{`r\.yaml:5: source_date_epoch: 1735689600000: want seconds`}},
		"bad package":       {validRecipe + "packages: [systemd, Bad_Name, systemd]\n", []string{`packages\[1\]: "Bad_Name"`, `packages\[2\]: "systemd" listed twice`}},
		"bad size":          {validRecipe + "size: 2GB\n", []string{`r\.yaml:6: size "2GB": want bytes or a number with KiB, MiB or GiB|line 6: size`}},
		"tiny size":         {validRecipe + "size: 1MiB\n", []string{`size: 1048576 bytes: want at least 64MiB`}},
		"bad hostname":      {validRecipe + "hostname: Build_Host\n", []string{`hostname: "Build_Host"`}},
		"bad root password": {validRecipe + "root_password: hunter2\n", []string{`root_password: "hunter2": want locked or empty`}},
		"bad mode":          {validRecipe + "files:\n  - {path: /etc/x, content: x, mode: \"0999\"}\n", []string{`mode "0999": want an octal number`}},
		"file problems": {validRecipe + `files:
  - {path: etc/relative, content: x}
  - {path: /etc/both, content: x, source: present}
  - {path: /etc/neither}
  - {path: /etc/missing, source: missing}
  - {path: /etc/escape, source: ../outside}
  - {path: /etc/link, type: symlink}
  - {path: /etc/odd, type: fifo}
  - {path: /etc/both, content: y}
  - {path: /etc/owner, content: x, owner: root}
`, []string{
			`r\.yaml:7: files\[0\]\.path: "etc/relative": want a clean absolute path`,
			`r\.yaml:8: files\[1\]: a file needs exactly one of source and content`,
			`r\.yaml:9: files\[2\]: a file needs exactly one of source and content`,
			`r\.yaml:10: files\[3\]\.source: stat .*missing: no such file`,
			`r\.yaml:11: files\[4\]\.source: "\.\./outside": want a path relative to the recipe's directory, inside it`,
			`r\.yaml:12: files\[5\]: a symlink needs a target`,
			`r\.yaml:13: files\[6\]\.type: "fifo": want file, dir or symlink`,
			`r\.yaml:14: files\[7\]\.path: "/etc/both" also at files\[1\]`,
			`r\.yaml:15: files\[8\]\.owner: "root": want USER:GROUP`,
		}},
		"bad unit": {validRecipe + "services:\n  enable: [ssh]\n  mask: [systemd-networkd.service]\n", []string{`r\.yaml:7: services\.enable\[0\]: "ssh": want a unit name with its suffix`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse(filepath.Join(dir, "r.yaml"), []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse = nil; want errors %q", tc.errs)
			}
			lines := strings.Split(err.Error(), "\n")
			for _, e := range tc.errs {
				re := regexp.MustCompile(e)
				found := false
				for _, l := range lines {
					found = found || re.MatchString(l)
				}
				if !found {
					t.Errorf("Parse error:\n%v\nhas no line matching %q", err, e)
				}
			}
		})
	}
}

// TestHash checks what the recipe hash covers: fields and added files'
// content, not comments or layout.
func TestHash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := filepath.Join(dir, "motd")
	os.WriteFile(src, []byte("hello\n"), 0o644)
	body := validRecipe + "files:\n  - {path: /etc/motd, source: motd}\n"
	hash := func(text string) string {
		t.Helper()
		r, err := Parse(filepath.Join(dir, "h.yaml"), []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		h, err := r.Hash()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	base := hash(body)
	if h := hash("# a comment\n" + strings.ReplaceAll(body, ": ", ":   ")); h != base {
		t.Errorf("a comment and spacing changed the hash")
	}
	if h := hash(body + "packages: [less]\n"); h == base {
		t.Errorf("a package did not change the hash")
	}
	os.WriteFile(src, []byte("hello, world\n"), 0o644)
	if h := hash(body); h == base {
		t.Errorf("the content of a source file did not change the hash")
	}
}

func TestDeriveUUID(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for _, arch := range []string{"amd64", "arm64"} {
		for _, purpose := range []string{"uuid", "hash_seed"} {
			for _, h := range []string{"aa", "bb"} {
				u := deriveUUID(h, arch, purpose)
				if !re.MatchString(u) {
					t.Errorf("deriveUUID(%s, %s, %s) = %s; want an RFC 9562 version 8 UUID", h, arch, purpose, u)
				}
				if u != deriveUUID(h, arch, purpose) {
					t.Errorf("deriveUUID not stable")
				}
				if seen[u] {
					t.Errorf("deriveUUID(%s, %s, %s) = %s, seen before", h, arch, purpose, u)
				}
				seen[u] = true
			}
		}
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"2GiB": 2 << 30, "512MiB": 512 << 20, "64KiB": 64 << 10, "4096": 4096} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "2GB", "-1", "0", "1.5GiB", "GiB", "99999999999GiB"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d; want an error", in, got)
		}
	}
}

func TestAgentBinaryPath(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		unit, want string
		err        bool
	}{
		"root storage daemon": {"[Service]\nExecStart=@/usr/sbin/rackboot-agent @rackboot-agent\n", "/usr/sbin/rackboot-agent", false},
		"plain":               {"[Unit]\nExecStart=/wrong\n[Service]\nType=notify\nExecStart=/usr/local/sbin/rackboot-agent --x\n", "/usr/local/sbin/rackboot-agent", false},
		"prefixes":            {"[Service]\nExecStart=-+/usr/bin/agent\n", "/usr/bin/agent", false},
		"none":                {"[Service]\nType=notify\n", AgentPath, false},
		"relative":            {"[Service]\nExecStart=rackboot-agent\n", "", true},
		"outside usr":         {"[Service]\nExecStart=/opt/agent\n", "", true},
	} {
		got, err := AgentBinaryPath(tc.unit)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%s: AgentBinaryPath = %q, %v; want %q (error %v)", name, got, err, tc.want, tc.err)
		}
	}
}
