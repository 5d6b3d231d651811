package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rackboot/rackboot/internal/testenv"
	"github.com/rackboot/rackboot/lab"
)

// imageRecipe writes a fake `make rootfs` output for minimal-amd64 under
// out: out/images/minimal-amd64/{root.img,manifest.json} with an ext4
// image whose /etc/release is release, and out/boot/amd64/{vmlinuz,
// initramfs.cpio.gz}. It returns the recipe directory.
func imageRecipe(t *testing.T, out, release string) string {
	t.Helper()
	mkfs := testenv.LookPath(t, "mkfs.ext4")
	dir := filepath.Join(out, "images", "minimal-amd64")
	boot := filepath.Join(out, "boot", "amd64")
	src := filepath.Join(out, "src")
	for _, d := range []string{dir, boot, filepath.Join(src, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "release"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "root.img")
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", src, img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	m, _ := json.Marshal(map[string]any{
		"name": "minimal", "arch": "amd64", "suite": "bookworm", "epoch": 1748736000,
		"sha256": hex.EncodeToString(sum[:]), "size": len(b),
	})
	for path, body := range map[string]string{
		filepath.Join(dir, "manifest.json"):      string(m),
		filepath.Join(boot, "vmlinuz"):           "kernel " + release,
		filepath.Join(boot, "initramfs.cpio.gz"): "initrd " + release,
	} {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// imageCmd runs `rackboot image ARGS...` in-process.
func imageCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := runImage(t.Context(), args, &stdout, &stderr)
	return stdout.String(), err
}

func mustImageCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := imageCmd(t, args...)
	if err != nil {
		t.Fatalf("rackboot image %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

var importedRE = regexp.MustCompile(`(?m)^imported (minimal-amd64@20250601-[0-9a-f]{12}): amd64, 8\.0 MiB, sha256 [0-9a-f]{64}$`)

// listRows returns `image list` as VERSION → its fields.
func listRows(t *testing.T, out string) map[string][]string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "IMAGE") {
		t.Fatalf("image list: no header:\n%s", out)
	}
	rows := map[string][]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) > 1 {
			rows[f[1]] = f
		}
	}
	return rows
}

// TestImageCLI drives the catalog commands end to end beside a state
// database with a running boot, as an operator would beside the server.
func TestImageCLI(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "rackboot.yaml")
	if err := os.WriteFile(cfg, []byte("state_dir: "+state+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir1 := imageRecipe(t, t.TempDir(), "one")
	dir2 := imageRecipe(t, t.TempDir(), "two")

	// Import a recipe output directory: the first version becomes active.
	out := mustImageCmd(t, "import", "--state", state, dir1)
	m := importedRE.FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, m[1]+" is active\n") {
		t.Fatalf("import: unexpected output:\n%s", out)
	}
	ref1 := m[1]
	v1 := strings.TrimPrefix(ref1, "minimal-amd64@")
	// Flags may follow the path; the second version isn't activated.
	out = mustImageCmd(t, "import", dir2, "--config", cfg)
	m = importedRE.FindStringSubmatch(out)
	if m == nil || strings.Contains(out, "active") {
		t.Fatalf("second import: unexpected output:\n%s", out)
	}
	ref2 := m[1]
	v2 := strings.TrimPrefix(ref2, "minimal-amd64@")
	if out := mustImageCmd(t, "import", "--state", state, dir1); out != ref1+" already imported\n"+ref1+" is active\n" {
		t.Errorf("importing again: %q", out)
	}

	rows := listRows(t, mustImageCmd(t, "list", "--state", state))
	if len(rows) != 2 || rows[v1][2] != "*" || rows[v2][2] == "*" {
		t.Fatalf("list: want 2 versions, %s active: %q", v1, rows)
	}
	for _, v := range []string{v1, v2} {
		// IMAGE VERSION [ACTIVE] ARCH SIZE(2) SHA256 DATE TIME BOARDS
		f := rows[v]
		if f[len(f)-7] != "amd64" || f[len(f)-5] != "MiB" || len(f[len(f)-4]) != 64 || f[len(f)-1] != "-" {
			t.Errorf("list row of %s = %q", v, f)
		}
	}

	// A board boots v1: the boot is recorded in the server's database
	// (left open, as a running server has it).
	db, err := lab.OpenSQLite(t.Context(), filepath.Join(state, "rackboot.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	boot := func(board, image string) {
		t.Helper()
		_, err := db.StartBoot(t.Context(), lab.BootRecord{
			Board: board, Token: fmt.Sprint(board, time.Now().UnixNano()), Session: board + "@s", Image: image,
			IP: netip.MustParseAddr("10.0.0.11"), MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 1, 1}, Started: time.Now(),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	boot("panda-01", ref1)

	out = mustImageCmd(t, "activate", "--config", cfg, ref2)
	if want := ref2 + " is active (was " + v1 + ")"; !strings.HasPrefix(out, want) {
		t.Errorf("activate = %q; want %q...", out, want)
	}
	rows = listRows(t, mustImageCmd(t, "list", "--state", state))
	if rows[v1][2] == "*" || rows[v2][2] != "*" || rows[v1][len(rows[v1])-1] != "panda-01" || rows[v2][len(rows[v2])-1] != "-" {
		t.Errorf("list after activate: %q", rows)
	}

	// v1 is in use by the running boot, v2 is active: nothing goes.
	if out := mustImageCmd(t, "gc", "--state", state); out != "nothing to delete\n" {
		t.Errorf("gc with v1 booted = %q", out)
	}
	// The board's next boot ends the one on v1: now v1 goes.
	boot("panda-01", ref2)
	if out, want := mustImageCmd(t, "gc", "--state", state), "deleted "+ref1+" (8.0 MiB)\n"; out != want {
		t.Errorf("gc = %q; want %q", out, want)
	}
	rows = listRows(t, mustImageCmd(t, "list", "--state", state))
	if len(rows) != 1 || rows[v2][len(rows[v2])-1] != "panda-01" {
		t.Errorf("list after gc: %q", rows)
	}

	if out := mustImageCmd(t, "verify", "--state", state); out != "ok   "+ref2+"\n" {
		t.Errorf("verify = %q", out)
	}
	root := filepath.Join(state, "images", "minimal-amd64", v2, "root.img")
	flip(t, root, 2000)
	out, err = imageCmd(t, "verify", "--state", state)
	if err == nil || errors.Is(err, errUsage) || exitCode(err) != 1 {
		t.Errorf("verify of a damaged image: err %v; want exit status 1", err)
	}
	if want := regexp.MustCompile(`^FAIL ` + ref2 + `: root.img: sha256 [0-9a-f]{64}, want [0-9a-f]{64}: checksum mismatch\n$`); !want.MatchString(out) {
		t.Errorf("verify of a damaged image printed %q; want %s", out, want)
	}
}

// flip inverts one byte of a (read-only) file.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0xff
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, b, 0o444); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o444)
}

func TestImageImportFile(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	dir := imageRecipe(t, t.TempDir(), "one")
	boot := filepath.Join(dir, "..", "..", "boot", "amd64")
	img := filepath.Join(dir, "root.img")

	// Without --kernel and --initrd, an image file has no boot files.
	if _, err := imageCmd(t, "import", "--state", state, img); err == nil || !strings.Contains(err.Error(), "no kernel and initramfs for its arch amd64") {
		t.Errorf("import without boot files: %v", err)
	}
	// The manifest may be anywhere.
	manifest := filepath.Join(t.TempDir(), "m.json")
	if err := os.Rename(filepath.Join(dir, "manifest.json"), manifest); err != nil {
		t.Fatal(err)
	}
	out := mustImageCmd(t, "import", "--state", state, "--name", "lab-root", "--manifest", manifest,
		"--kernel", filepath.Join(boot, "vmlinuz"), "--initrd", "amd64="+filepath.Join(boot, "initramfs.cpio.gz"), img)
	if !regexp.MustCompile(`^imported lab-root@20250601-[0-9a-f]{12}: `).MatchString(out) {
		t.Errorf("import = %q", out)
	}
	// A manifest that doesn't match the image is refused.
	b, _ := os.ReadFile(manifest)
	var m map[string]any
	json.Unmarshal(b, &m)
	m["sha256"] = strings.Repeat("1", 64)
	b, _ = json.Marshal(m)
	os.WriteFile(manifest, b, 0o644)
	_, err := imageCmd(t, "import", "--state", state, "--name", "other", "--manifest", manifest,
		"--kernel", filepath.Join(boot, "vmlinuz"), "--initrd", filepath.Join(boot, "initramfs.cpio.gz"), img)
	if err == nil || !strings.Contains(err.Error(), "manifest says "+strings.Repeat("1", 64)) {
		t.Errorf("import with a wrong sha256: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "images", "other")); err == nil {
		entries, _ := os.ReadDir(filepath.Join(state, "images", "other"))
		if len(entries) > 0 {
			t.Errorf("refused import left %v", entries)
		}
	}
}

func TestImageUsageErrors(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	tests := [][]string{
		{},
		{"frobnicate"},
		{"list"},
		{"list", "--state", state, "--config", "x.yaml"},
		{"list", "--state", state, "extra"},
		{"activate", "--state", state},
		{"activate", "--state", state, "minimal"},
		{"activate", "--state", state, "a@b", "c@d"},
		{"import", "--state", state},
		{"import", "--state", state, "--kernel", "", "x"},
		{"gc", "--bogus"},
	}
	for _, args := range tests {
		_, err := imageCmd(t, args...)
		if !errors.Is(err, errUsage) {
			t.Errorf("rackboot image %q = %v; want a usage error", args, err)
		}
	}
	if _, err := imageCmd(t, "activate", "--state", state, "minimal@20250601-000000000000"); err == nil || errors.Is(err, errUsage) {
		t.Errorf("activating an unknown version: %v; want a plain error", err)
	}
}
