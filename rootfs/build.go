package rootfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Where the agent comes from and where it goes.
const (
	// AgentPackage is the agent's Go package, relative to the module root.
	AgentPackage = "./cmd/rackboot-agent"
	// AgentUnitSource is its systemd unit, relative to the module root.
	AgentUnitSource = "agent/rackboot-agent.service"
	// AgentPath is where the image has the agent binary unless its unit's
	// ExecStart= names another path (see [AgentBinaryPath]).
	AgentPath = "/usr/local/sbin/rackboot-agent"
	// AgentUnitPath is where the image has the agent's unit.
	AgentUnitPath = "/usr/local/lib/systemd/system/rackboot-agent.service"
	// BuildMount is the build disk's mount point, empty in the image.
	BuildMount = "/build"
	// ImageFile and ManifestFile are the outputs' names in the output
	// directory.
	ImageFile    = "root.img"
	ManifestFile = "manifest.json"
)

// Options configures [Build].
type Options struct {
	// Recipe is the recipe to build. Required.
	Recipe *Recipe
	// Arch is the Debian architecture to build for; the recipe must list
	// it. Required.
	Arch string
	// Out is the output directory (out/images/NAME-ARCH): it receives
	// root.img and manifest.json, replaced only once the new image has
	// passed [Inspect]. Required.
	Out string
	// Cache keeps downloaded .deb files between builds; "" downloads
	// every time. Packages of every arch can share it.
	Cache string
	// Repo is the module root that the agent is built from. "" or a
	// tree without the agent gives an image without it: a warning, and
	// "agent": null in the manifest.
	Repo string
	// AgentVersion is set as the agent's main.version.
	AgentVersion string
	// KeepTree keeps the unpacked root in Out/tree for debugging.
	KeepTree bool
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
	// Output receives mmdebstrap's and the other tools' output; nil
	// discards it.
	Output io.Writer
}

// Build makes the master image of a recipe for one architecture:
// mmdebstrap into a directory, the recipe's customizations, every time
// stamp clamped to SOURCE_DATE_EPOCH, mkfs.ext4 -d with a UUID and
// hash seed derived from the recipe, inode change times fixed with
// debugfs, then [Inspect]. The same recipe and the same package versions
// give the same bytes. It needs root (mmdebstrap --mode=root).
//
// It returns the manifest also written to Out/manifest.json.
func Build(ctx context.Context, o Options) (*Manifest, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Output == nil {
		o.Output = io.Discard
	}
	r := o.Recipe
	switch {
	case r == nil || o.Out == "":
		return nil, errors.New("build: Recipe and Out are required")
	case !r.Supports(o.Arch):
		return nil, fmt.Errorf("recipe %s does not list architecture %q (it has %s)", r.Name, o.Arch, strings.Join(r.Architectures, ", "))
	case os.Geteuid() != 0:
		return nil, errors.New("building a root image needs root (mmdebstrap --mode=root keeps owners, device nodes and xattrs)")
	}
	for _, tool := range []string{"mmdebstrap", "mke2fs", "debugfs", "systemctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (scripts/rootfs.sh installs it): %w", tool, err)
		}
	}
	if err := CheckEmulation(o.Arch); err != nil {
		return nil, err
	}
	hash, err := r.Hash()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	if o.Out, err = filepath.Abs(o.Out); err != nil {
		return nil, err
	}
	// One build at a time in a directory.
	lock, err := os.OpenFile(filepath.Join(o.Out, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return nil, fmt.Errorf("another build is running in %s: %w", o.Out, err)
	}
	// Leftovers of an interrupted build.
	for _, p := range []string{filepath.Join(o.Out, ".work"), filepath.Join(o.Out, "tree")} {
		if err := safeRemoveAll(p); err != nil {
			return nil, err
		}
	}
	work := filepath.Join(o.Out, ".work")
	if err := os.Mkdir(work, 0o755); err != nil {
		return nil, err
	}
	tree := filepath.Join(work, "tree")
	defer func() {
		if o.KeepTree {
			if err := os.Rename(tree, filepath.Join(o.Out, "tree")); err == nil {
				log.Info("tree kept", "file", filepath.Join(o.Out, "tree"))
			}
		}
		if err := safeRemoveAll(work); err != nil {
			log.Error("cleaning up", "err", err)
		}
	}()

	m := &Manifest{
		Recipe:          r.Name,
		RecipeSHA256:    hash,
		Arch:            o.Arch,
		Suite:           r.Suite,
		Variant:         r.Variant,
		Mirrors:         r.Mirrors,
		SourceDateEpoch: r.SourceDateEpoch,
		Hostname:        r.Hostname,
		Filesystem: Filesystem{
			Type:     "ext4",
			Label:    r.Name,
			UUID:     deriveUUID(hash, o.Arch, "uuid"),
			HashSeed: deriveUUID(hash, o.Arch, "hash_seed"),
			Size:     int64(r.Size),
		},
		Tools: map[string]string{},
	}
	m.Tools["mmdebstrap"] = toolVersion(ctx, "mmdebstrap", "--version")
	m.Tools["mke2fs"] = toolVersion(ctx, "mke2fs", "-V")

	var agent *builtAgent
	if r.Agent {
		step := time.Now()
		agent, err = buildAgent(ctx, o, work)
		if err != nil {
			return nil, err
		}
		if agent == nil {
			w := fmt.Sprintf("agent: %s or %s missing in %s: this image has NO rackboot agent", AgentPackage, AgentUnitSource, o.Repo)
			if o.Repo == "" {
				w = "agent: no repository to build it from: this image has NO rackboot agent"
			}
			m.Warnings = append(m.Warnings, w)
			log.Warn("building without the agent", "err", w)
		} else {
			m.Agent = &agent.Agent
			m.Tools["go"] = runtime.Version()
			log.Info("agent built", "file", agent.Path, "bytes", agent.size, "dur", time.Since(step).Round(time.Millisecond))
		}
	}

	step := time.Now()
	log.Info("mmdebstrap", "recipe", r.Name, "arch", o.Arch, "suite", r.Suite)
	if err := mmdebstrap(ctx, o, tree); err != nil {
		return nil, err
	}
	log.Info("mmdebstrap done", "dur", time.Since(step).Round(time.Millisecond))

	step = time.Now()
	if err := Customize(ctx, r, tree, agent); err != nil {
		return nil, fmt.Errorf("customizing the root: %w", err)
	}
	if m.Packages, err = readDpkgStatus(filepath.Join(tree, "var/lib/dpkg/status")); err != nil {
		return nil, err
	}
	if err := ClampTimes(tree, r.Epoch()); err != nil {
		return nil, fmt.Errorf("clamping time stamps: %w", err)
	}
	log.Info("customized", "packages", len(m.Packages), "dur", time.Since(step).Round(time.Millisecond))

	step = time.Now()
	img := filepath.Join(work, ImageFile)
	fsys := Ext4{
		Label: m.Filesystem.Label, UUID: m.Filesystem.UUID, HashSeed: m.Filesystem.HashSeed,
		Size: m.Filesystem.Size, Epoch: r.SourceDateEpoch, Output: o.Output,
	}
	if err := fsys.Make(ctx, img, tree); err != nil {
		return nil, err
	}
	log.Info("mkfs.ext4", "dur", time.Since(step).Round(time.Millisecond))

	step = time.Now()
	if err := Inspect(ctx, img, Expect{Hostname: r.Hostname, Agent: m.Agent != nil}); err != nil {
		bad := filepath.Join(o.Out, ImageFile+".rejected")
		os.Rename(img, bad)
		return nil, fmt.Errorf("the image failed inspection (kept as %s):\n%w", bad, err)
	}
	sum, n, err := fileSHA256(img)
	if err != nil {
		return nil, err
	}
	m.Image = Image{File: ImageFile, SHA256: sum, Size: n}
	log.Info("inspected", "dur", time.Since(step).Round(time.Millisecond))

	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(work, ManifestFile)
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	// The manifest goes last: one that names the image's sha256 only
	// ever sits next to that image.
	os.Remove(filepath.Join(o.Out, ManifestFile))
	os.Remove(filepath.Join(o.Out, ImageFile+".rejected"))
	if err := os.Rename(img, filepath.Join(o.Out, ImageFile)); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(o.Out, ManifestFile)); err != nil {
		return nil, err
	}
	log.Info("image built", "file", filepath.Join(o.Out, ImageFile), "sha256", m.Image.SHA256, "bytes", m.Image.Size, "dur", time.Since(start).Round(time.Millisecond))
	for _, w := range m.Warnings {
		log.Warn("WARNING", "err", w)
	}
	return m, nil
}

// mmdebstrap installs the recipe's packages into tree.
func mmdebstrap(ctx context.Context, o Options, tree string) error {
	r := o.Recipe
	args := []string{
		"--mode=root", "--format=directory",
		"--variant=" + r.Variant, "--architectures=" + o.Arch,
		// Without fsync after every file: the tree is thrown away if
		// the build fails (half the time of a build). The option is
		// removed from the image in Customize.
		"--dpkgopt=force-unsafe-io",
		"--aptopt=Acquire::Retries \"3\"",
	}
	if len(r.Packages) > 0 {
		args = append(args, "--include="+strings.Join(r.Packages, ","))
	}
	if o.Cache != "" {
		cache, err := filepath.Abs(filepath.Join(o.Cache, "debs"))
		if err != nil {
			return err
		}
		if strings.ContainsAny(cache, " \t\n'\"") {
			return fmt.Errorf("cache directory %q: mmdebstrap hooks can't take spaces or quotes", cache)
		}
		if err := os.MkdirAll(cache, 0o755); err != nil {
			return err
		}
		// mmdebstrap's own recipe for a package cache (man mmdebstrap,
		// --skip): apt finds the .debs already there and downloads only
		// what is missing; they are copied out again before cleanup.
		args = append(args,
			"--skip=download/empty", "--skip=essential/unlink",
			`--setup-hook=mkdir -p "$1"/var/cache/apt/archives/`,
			"--setup-hook=sync-in "+cache+" /var/cache/apt/archives/",
			"--customize-hook=sync-out /var/cache/apt/archives "+cache,
		)
	}
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return err
	}
	args = append(args, r.Suite, tree)
	args = append(args, r.Mirrors...)
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(r.SourceDateEpoch, 10), "LC_ALL=C.UTF-8", "TZ=UTC")
	tail := &tailBuffer{max: 16 << 10}
	out := io.MultiWriter(o.Output, tail)
	cmd.Stdout, cmd.Stderr = out, out
	// mmdebstrap unmounts /proc, /sys and /dev in the tree on SIGTERM;
	// SIGKILL would leave them mounted.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("mmdebstrap %s %s (%s): %w\n%s", r.Suite, o.Arch, strings.Join(r.Packages, ","), err, tail.errors())
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

// errors returns apt's and mmdebstrap's error lines ("E: ..."), or the
// last lines if there are none.
func (t *tailBuffer) errors() string {
	lines := strings.Split(strings.TrimSpace(string(t.b)), "\n")
	var errs []string
	for _, l := range lines {
		if strings.HasPrefix(l, "E: ") {
			errs = append(errs, l)
		}
	}
	if len(errs) == 0 {
		errs = lines[max(0, len(lines)-15):]
	}
	return strings.Join(errs, "\n")
}

// builtAgent is the agent cross-built for an image.
type builtAgent struct {
	Agent
	binary, unit string // files in the work directory
	size         int64
}

// buildAgent cross-builds the agent for o.Arch, or returns nil if the
// repository has no agent (yet).
func buildAgent(ctx context.Context, o Options, work string) (*builtAgent, error) {
	if o.Repo == "" {
		return nil, nil
	}
	pkg := filepath.Join(o.Repo, AgentPackage)
	unit := filepath.Join(o.Repo, AgentUnitSource)
	if _, err := os.Stat(pkg); err != nil {
		return nil, nil
	}
	if _, err := os.Stat(unit); err != nil {
		return nil, nil
	}
	target := Arches[o.Arch]
	bin := filepath.Join(work, "rackboot-agent")
	ldflags := "-s -w -buildid="
	if o.AgentVersion != "" {
		ldflags += " -X main.version=" + o.AgentVersion
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", bin, AgentPackage)
	cmd.Dir = o.Repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+target.GOARCH, "GOARM="+target.GOARM)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building the agent (%s for %s): %w\n%s", AgentPackage, o.Arch, err, out.String())
	}
	unitText, err := os.ReadFile(unit)
	if err != nil {
		return nil, err
	}
	dest, err := AgentBinaryPath(string(unitText))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", AgentUnitSource, err)
	}
	a := &builtAgent{binary: bin, unit: unit}
	a.Package = AgentPackage
	a.Version = o.AgentVersion
	if a.SHA256, a.size, err = fileSHA256(bin); err != nil {
		return nil, err
	}
	if a.UnitSHA256, _, err = fileSHA256(unit); err != nil {
		return nil, err
	}
	a.Path, a.UnitPath = dest, AgentUnitPath
	return a, nil
}

// AgentBinaryPath returns where the agent's unit expects the binary: the
// program of its ExecStart= (without systemd's prefixes such as "@", and
// without the arguments), or [AgentPath] if it names none. The image
// puts the binary there, so that the unit and the binary always agree.
func AgentBinaryPath(unit string) (string, error) {
	section := ""
	for _, l := range strings.Split(unit, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") {
			section = l
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if section != "[Service]" || !ok || strings.TrimSpace(k) != "ExecStart" {
			continue
		}
		prog, _, _ := strings.Cut(strings.TrimLeft(strings.TrimSpace(v), "@-:+!|"), " ")
		if !strings.HasPrefix(prog, "/usr/") || filepath.Clean(prog) != prog {
			return "", fmt.Errorf("ExecStart=%s: want an absolute path under /usr", v)
		}
		return prog, nil
	}
	return AgentPath, nil
}

// fileSHA256 returns the SHA-256 and length of a file. Holes in a sparse
// file are hashed from a buffer of zeros instead of being read: an 8 GiB
// image holds well under 1 GiB of data.
func fileSHA256(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	size := st.Size()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil { // ENXIO: only a hole up to the end
			data = size
		}
		for ; off < data; off += int64(len(zeros)) {
			h.Write(zeros[:min(int64(len(zeros)), data-off)])
		}
		off = data
		if off >= size {
			break
		}
		hole, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return "", 0, err
		}
		if _, err := io.CopyBuffer(h, io.LimitReader(f, hole-off), buf); err != nil {
			return "", 0, err
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// qemuNames are the binfmt_misc entries qemu-user-static registers, by
// Debian architecture.
var qemuNames = map[string]string{"amd64": "x86_64", "arm64": "aarch64", "armhf": "arm"}

// hostArch is the Debian architecture of this machine.
func hostArch() string {
	switch runtime.GOARCH {
	case "arm":
		return "armhf"
	default:
		return runtime.GOARCH
	}
}

// CheckEmulation reports whether this machine can run arch's binaries,
// which mmdebstrap needs to configure packages: natively, or through
// qemu-user-static registered with binfmt_misc (with the F flag, so that
// it works inside the chroot).
func CheckEmulation(arch string) error {
	host := hostArch()
	if arch == host || host == "arm64" && arch == "armhf" {
		return nil
	}
	q := qemuNames[arch]
	entry := "/proc/sys/fs/binfmt_misc/qemu-" + q
	b, err := os.ReadFile(entry)
	if err != nil {
		how := "register it: scripts/rootfs.sh does (apt-get install qemu-user-static; " +
			"mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; " +
			"cat /usr/lib/binfmt.d/qemu-" + q + ".conf > /proc/sys/fs/binfmt_misc/register)"
		if _, err := os.Stat("/proc/sys/fs/binfmt_misc/status"); err != nil {
			how = "binfmt_misc is not mounted; " + how
		}
		return fmt.Errorf("building %s on %s needs qemu-%s through binfmt_misc, and %s is missing: %s", arch, host, q, entry, how)
	}
	s := string(b)
	if !strings.HasPrefix(s, "enabled") {
		return fmt.Errorf("%s is disabled (echo 1 > %s)", entry, entry)
	}
	for _, l := range strings.Split(s, "\n") {
		if f, ok := strings.CutPrefix(l, "flags: "); ok && !strings.Contains(f, "F") {
			return fmt.Errorf("%s lacks the F flag (fix binary), so the interpreter can't be found inside the chroot: re-register it from /usr/lib/binfmt.d/qemu-%s.conf", entry, q)
		}
	}
	return nil
}

func toolVersion(ctx context.Context, name string, args ...string) string {
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return first
}
