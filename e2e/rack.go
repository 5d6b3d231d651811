// Package e2e is the virtual rack: rackboot serve in a network namespace
// of its own, with QEMU boards on taps bridged to it, booting through real
// firmware (Debian's iPXE ROM on x86, U-Boot on ARM), the real Linux NBD
// driver, rackboot's initramfs and a master root image. It backs the
// end-to-end tests and `make demo`.
//
// Nothing touches the host's interfaces: the bridge, taps and DHCP live in
// the namespace, which Close removes. KVM is used only where a functional
// probe shows it works; otherwise boards run under TCG.
package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Artifacts are the files a rack boots.
type Artifacts struct {
	Rackboot string // the rackboot binary
	Tree     string // boot tree: pxelinux, iPXE, and ARCH/vmlinuz, ARCH/initramfs.cpio.gz
	Image    string // amd64 master root image (ext4)
	// ARM64Image is the arm64 master root image; empty or missing means
	// no arm64 boards.
	ARM64Image string
}

// DefaultArtifacts finds the build outputs of `make build boot-tree
// initramfs rootfs` under the repository at root.
func DefaultArtifacts(root string) Artifacts {
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	return Artifacts{
		Rackboot:   filepath.Join(root, "bin", "rackboot"),
		Tree:       filepath.Join(root, "out", "boot"),
		Image:      filepath.Join(root, "out", "images", "minimal-amd64", "root.img"),
		ARM64Image: filepath.Join(root, "out", "images", "minimal-arm64", "root.img"),
	}
}

// CheckARM64 reports what an arm64 board needs and is missing.
func (a Artifacts) CheckARM64() error {
	var errs []error
	for what, p := range map[string]string{
		"arm64 root image": a.ARM64Image, "arm64 kernel": filepath.Join(a.Tree, "arm64", "vmlinuz"),
		"arm64 initramfs": filepath.Join(a.Tree, "arm64", "initramfs.cpio.gz"), "U-Boot": ubootARM64,
	} {
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	return errors.Join(errs...)
}

// ubootARM64 is Debian's U-Boot for QEMU's arm64 virt machine (u-boot-qemu).
const ubootARM64 = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"

// Check reports what is missing.
func (a Artifacts) Check() error {
	var errs []error
	for what, p := range map[string]string{"rackboot binary": a.Rackboot, "boot tree": a.Tree, "root image": a.Image} {
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	return errors.Join(errs...)
}

// Subnet of every rack: the appliance is .1, boards get .10 and up.
var (
	applianceIP = netip.MustParseAddr("10.66.0.1")
	rackPrefix  = netip.MustParsePrefix("10.66.0.1/24")
)

// Rack is a running virtual rack.
type Rack struct {
	Dir       string // working directory: config, state, board disks, logs
	NS        string // network namespace of the appliance and the boards
	Artifacts Artifacts
	Accel     string // "kvm" or "tcg"
	// Log receives progress lines; nil discards them.
	Log io.Writer

	boards    []*Board
	appliance *process
	mu        sync.Mutex
}

// NewRack creates the namespace, its bridge and a working directory.
func NewRack(ctx context.Context, dir string, a Artifacts) (*Rack, error) {
	if err := a.Check(); err != nil {
		return nil, err
	}
	var b [3]byte
	rand.Read(b[:])
	r := &Rack{Dir: dir, NS: "rbrack" + hex.EncodeToString(b[:]), Artifacts: a}
	steps := [][]string{
		{"ip", "netns", "add", r.NS},
		{"ip", "-n", r.NS, "link", "set", "lo", "up"},
		{"ip", "-n", r.NS, "link", "add", "br0", "type", "bridge", "forward_delay", "0"},
		{"ip", "-n", r.NS, "addr", "add", rackPrefix.String(), "dev", "br0"},
		{"ip", "-n", r.NS, "link", "set", "br0", "up"},
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, s[0], s[1:]...).CombinedOutput(); err != nil {
			r.Close()
			return nil, fmt.Errorf("%s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	r.Accel = probeKVM(ctx, filepath.Join(a.Tree, "amd64", "vmlinuz"))
	return r, nil
}

func (r *Rack) logf(format string, args ...any) {
	if r.Log != nil {
		fmt.Fprintf(r.Log, format+"\n", args...)
	}
}

// Close stops everything and removes the namespace.
func (r *Rack) Close() error {
	for _, b := range r.boards {
		b.PowerOff()
	}
	if r.appliance != nil {
		r.appliance.stop(syscall.SIGTERM, 30*time.Second)
	}
	return exec.Command("ip", "netns", "del", r.NS).Run()
}

// Config is the appliance configuration for the rack's boards.
func (r *Rack) Config() string {
	var b strings.Builder
	fmt.Fprintf(&b, `state_dir: %s
log_level: debug
address: %s
nbd: {listen: "%s:10809"}
http: {listen: "%s:8080"}
tftp: {listen: "%s:69"}
dhcp:
  mode: full
  interfaces: [br0]
  range_start: 10.66.0.100
  range_end: 10.66.0.200
  router: %s
  # The namespace is ours alone, and the probe costs 5 s of every start.
  probe: false
images:
  - {name: minimal, path: %s}
`, filepath.Join(r.Dir, "state"), applianceIP, applianceIP, applianceIP, applianceIP, applianceIP, r.Artifacts.Image)
	arm := false
	for _, bd := range r.boards {
		arm = arm || bd.Arch == "arm64"
	}
	if arm {
		fmt.Fprintf(&b, "  - {name: minimal-arm64, path: %s}\n", r.Artifacts.ARM64Image)
	}
	fmt.Fprintf(&b, `boot:
  tree: %s
  kernels:
    amd64: {kernel: amd64/vmlinuz, initrd: amd64/initramfs.cpio.gz}
    # Debian's arm64 vmlinuz is an uncompressed Image: U-Boot's booti takes it.
    arm64: {kernel: arm64/vmlinuz, initrd: arm64/initramfs.cpio.gz}
boards:
`, r.Artifacts.Tree)
	for _, bd := range r.boards {
		image := "minimal"
		if bd.Arch == "arm64" {
			image = "minimal-arm64"
		}
		fmt.Fprintf(&b, "  - {name: %s, mac: %q, arch: %s, image: %s, ip: %s, build_disk: largest, loader: %s}\n",
			bd.Name, bd.MAC, bd.Arch, image, bd.IP, bd.Loader)
	}
	return b.String()
}

// StartAppliance writes the config and starts `rackboot serve` in the
// namespace, returning once its HTTP server answers.
func (r *Rack) StartAppliance(ctx context.Context) error {
	cfg := filepath.Join(r.Dir, "rackboot.yaml")
	if err := os.WriteFile(cfg, []byte(r.Config()), 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(r.Dir, "rackboot.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p, err := start(exec.Command("ip", "netns", "exec", r.NS, r.Artifacts.Rackboot, "serve", "--config", cfg), logf)
	if err != nil {
		return err
	}
	r.appliance = p
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := r.api(ctx, "/api/v1/unknown"); err == nil {
			r.logf("appliance up at %s", applianceIP)
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("rackboot serve exited: %v (see %s)", p.err, logf.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // polling for readiness
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rackboot serve not answering after 60s (see %s)", logf.Name())
		}
	}
}

// StopAppliance stops rackboot with sig (SIGTERM: clean; SIGKILL: a crash).
func (r *Rack) StopAppliance(sig syscall.Signal) error {
	if r.appliance == nil {
		return nil
	}
	err := r.appliance.stop(sig, 60*time.Second)
	r.appliance = nil
	if sig == syscall.SIGKILL {
		return nil
	}
	return err
}

// api GETs an appliance API path from inside the namespace.
func (r *Rack) api(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", r.NS, "curl", "-fsS",
		fmt.Sprintf("http://%s:8080%s", applianceIP, path)).Output()
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return out, nil
}

// Boot is a boot as the appliance's API shows it.
type Boot struct {
	ID      int64     `json:"id"`
	Board   string    `json:"board"`
	IP      string    `json:"ip"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	Events  []struct {
		Time     time.Time       `json:"time"`
		Kind     string          `json:"kind"`
		Name     string          `json:"name"`
		Status   string          `json:"status"`
		Bytes    int64           `json:"bytes"`
		Duration time.Duration   `json:"duration_ns"`
		Error    string          `json:"error"`
		Detail   json.RawMessage `json:"detail"`
	} `json:"events"`
}

// Boots returns the appliance's newest boots.
func (r *Rack) Boots(ctx context.Context) ([]Boot, error) {
	b, err := r.api(ctx, "/api/v1/boots?limit=100")
	if err != nil {
		return nil, err
	}
	var out []Boot
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decoding boots: %w", err)
	}
	return out, nil
}

// CurrentBoot returns a board's newest boot.
func (r *Rack) CurrentBoot(ctx context.Context, board string) (Boot, error) {
	boots, err := r.Boots(ctx)
	if err != nil {
		return Boot{}, err
	}
	for _, b := range boots {
		if b.Board == board {
			return b, nil
		}
	}
	return Boot{}, fmt.Errorf("no boot of %s yet", board)
}

// WaitStep waits until the board's boot newer than after reports step
// with status ok, and returns that boot. A failed step ends the wait with
// its error.
func (r *Rack) WaitStep(ctx context.Context, board, step string, after int64) (Boot, error) {
	for {
		b, err := r.CurrentBoot(ctx, board)
		if err == nil && b.ID > after {
			for _, e := range b.Events {
				if e.Kind != "step" || e.Name != step {
					continue
				}
				switch e.Status {
				case "ok":
					return b, nil
				case "failed":
					return b, fmt.Errorf("%s: step %s failed: %s", board, e.Name, e.Error)
				}
			}
			for _, e := range b.Events {
				if e.Kind == "step" && e.Status == "failed" {
					return b, fmt.Errorf("%s: step %s failed: %s", board, e.Name, e.Error)
				}
			}
		}
		select {
		case <-ctx.Done():
			return Boot{}, fmt.Errorf("%s: waiting for step %s: %w", board, step, ctx.Err())
		case <-time.After(500 * time.Millisecond): // polling the API
		}
	}
}

// StateDir is the appliance's state directory.
func (r *Rack) StateDir() string { return filepath.Join(r.Dir, "state") }

// Sessions lists the write layers on disk, as `rackboot nbd --sessions`.
func (r *Rack) Sessions(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, r.Artifacts.Rackboot, "nbd", "--state", r.StateDir(), "--sessions").CombinedOutput()
	return string(out), err
}

// process is a child process with its exit status.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func start(cmd *exec.Cmd, out io.Writer) (*process, error) {
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop signals the process group and waits up to timeout, then kills it.
func (p *process) stop(sig syscall.Signal, timeout time.Duration) error {
	syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(timeout):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s didn't stop within %v", p.cmd.Path, timeout)
	}
	return p.err
}

// probeKVM decides the accelerator with a functional probe: /dev/kvm
// existing proves nothing (on PVM hosts it exists and ordinary guests hang
// in it), so it boots the board kernel under KVM and wants to see the
// kernel's banner on the serial console within a few seconds.
func probeKVM(ctx context.Context, kernel string) string {
	kvmProbe.Do(func() { kvmProbe.accel = runKVMProbe(ctx, kernel) })
	return kvmProbe.accel
}

var kvmProbe struct {
	sync.Once
	accel string
}

func runKVMProbe(ctx context.Context, kernel string) string {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return "tcg"
	}
	ctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-M", "pc", "-m", "256",
		"-display", "none", "-nodefaults", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "tcg"
	}
	if err := cmd.Start(); err != nil {
		return "tcg"
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(io.LimitReader(out, 1<<20))
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Linux version") {
				found <- true
				return
			}
		}
		found <- false
	}()
	select {
	case ok := <-found:
		if ok {
			return "kvm"
		}
	case <-ctx.Done():
	}
	return "tcg"
}
