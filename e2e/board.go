package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Board is a QEMU guest on a tap in the rack's bridge, with a virtio build
// disk, its serial console on a socket and a QMP socket for power control.
type Board struct {
	Name   string
	MAC    string
	IP     netip.Addr
	Arch   string // amd64 or arm64
	Loader string // ipxe or pxelinux: what its iPXE ROM is given
	Disk   string // build disk image
	// DiskSize is the build disk's size in bytes.
	DiskSize int64
	// DiskBus is how the build disk is attached on x86: "virtio" (the
	// default) or "nvme". Set it before PowerOn.
	DiskBus string

	rack    *Rack
	tap     string
	qemu    *process
	console *Console
	qmp     string
	started time.Time
}

// AddBoard declares a board; call before StartAppliance so that it is in
// the inventory.
func (r *Rack) AddBoard(name, arch, loader string) (*Board, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.boards) + 1
	b := &Board{
		Name: name, Arch: arch, Loader: loader,
		MAC:      fmt.Sprintf("52:54:00:66:00:%02x", n),
		IP:       netip.AddrFrom4([4]byte{10, 66, 0, byte(10 + n)}),
		Disk:     filepath.Join(r.Dir, name+"-disk.img"),
		DiskSize: 8 << 30,
		rack:     r,
		tap:      fmt.Sprintf("tap%d", n),
		qmp:      filepath.Join(r.Dir, name+".qmp"),
	}
	f, err := os.Create(b.Disk)
	if err != nil {
		return nil, err
	}
	f.Truncate(b.DiskSize)
	f.Close()
	for _, s := range [][]string{
		{"ip", "-n", r.NS, "tuntap", "add", "dev", b.tap, "mode", "tap"},
		{"ip", "-n", r.NS, "link", "set", b.tap, "master", "br0", "up"},
	} {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	r.boards = append(r.boards, b)
	return b, nil
}

// PowerOn starts the guest: firmware, then network boot.
func (b *Board) PowerOn(ctx context.Context) error {
	if b.qemu != nil {
		return fmt.Errorf("%s is already on", b.Name)
	}
	sock := filepath.Join(b.rack.Dir, b.Name+".console")
	os.Remove(sock)
	os.Remove(b.qmp)
	args := b.qemuArgs(sock)
	logf, err := os.OpenFile(filepath.Join(b.rack.Dir, b.Name+".qemu.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p, err := start(exec.Command("ip", append([]string{"netns", "exec", b.rack.NS}, args...)...), logf)
	if err != nil {
		return err
	}
	b.qemu = p
	b.started = time.Now()
	// QEMU waits for the console client before running the guest, so no
	// firmware output is lost.
	var conn net.Conn
	for conn == nil {
		c, err := net.Dial("unix", sock)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-p.done:
			return fmt.Errorf("qemu for %s exited: %v (see %s)", b.Name, p.err, logf.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // waiting for QEMU's socket
		}
	}
	logPath := filepath.Join(b.rack.Dir, b.Name+".console.log")
	b.console = newConsole(conn, logPath)
	b.rack.logf("%s powered on (%s, %s)", b.Name, b.Arch, b.rack.Accel)
	return nil
}

func (b *Board) qemuArgs(console string) []string {
	common := []string{
		"-m", "1024", "-smp", "1", "-nodefaults", "-display", "none", "-no-user-config",
		"-chardev", "socket,id=ser0,path=" + console + ",server=on,wait=on",
		"-serial", "chardev:ser0",
		"-qmp", "unix:" + b.qmp + ",server=on,wait=off",
		"-netdev", "tap,id=n0,ifname=" + b.tap + ",script=no,downscript=no",
		"-drive", "file=" + b.Disk + ",if=none,id=d0,format=raw,discard=unmap,cache=unsafe",
	}
	switch b.Arch {
	case "arm64":
		return append([]string{"qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-accel", "tcg",
			"-bios", ubootARM64,
			"-device", "virtio-net-device,netdev=n0,mac=" + b.MAC,
			"-device", "virtio-blk-device,drive=d0"}, common...)
	}
	cpu := "max"
	if b.rack.Accel == "kvm" {
		cpu = "host"
	}
	disk := "virtio-blk-pci,drive=d0"
	if b.DiskBus == "nvme" {
		disk = "nvme,drive=d0,serial=rb-" + b.Name
	}
	return append([]string{"qemu-system-x86_64", "-M", "pc,graphics=off", "-accel", b.rack.Accel, "-cpu", cpu,
		"-boot", "n",
		"-device", "virtio-net-pci,netdev=n0,mac=" + b.MAC,
		"-device", disk}, common...)
}

// Console is the board's serial console.
func (b *Board) Console() *Console { return b.console }

// PoweredOn is when PowerOn started the guest.
func (b *Board) PoweredOn() time.Time { return b.started }

// Reset resets the guest through QEMU, as a reboot nobody asked for: the
// appliance is not told.
func (b *Board) Reset(ctx context.Context) error {
	if err := b.qmpCommand(ctx, "system_reset"); err != nil {
		return err
	}
	b.started = time.Now()
	b.rack.logf("%s reset through QEMU", b.Name)
	return nil
}

// PowerOff stops the guest at once, like pulling the plug.
func (b *Board) PowerOff() error {
	if b.qemu == nil {
		return nil
	}
	b.qmpCommand(context.Background(), "quit")
	err := b.qemu.stop(syscall.SIGTERM, 10*time.Second)
	b.qemu = nil
	if b.console != nil {
		b.console.Close()
	}
	return err
}

// qmpCommand runs one QMP command: greeting, qmp_capabilities, command.
func (b *Board) qmpCommand(ctx context.Context, cmd string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", b.qmp)
	if err != nil {
		return fmt.Errorf("QMP %s: %w", b.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	readReply := func() error {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return err
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			if e, ok := m["error"]; ok {
				return fmt.Errorf("QMP error: %s", e)
			}
			if _, ok := m["return"]; ok {
				return nil
			}
			if _, ok := m["QMP"]; ok {
				return nil
			}
		}
	}
	if err := readReply(); err != nil { // greeting
		return fmt.Errorf("QMP %s greeting: %w", b.Name, err)
	}
	for _, c2 := range []string{"qmp_capabilities", cmd} {
		if _, err := fmt.Fprintf(c, `{"execute": %q}`+"\n", c2); err != nil {
			return err
		}
		if err := readReply(); err != nil {
			if cmd == "quit" && errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("QMP %s %s: %w", b.Name, c2, err)
		}
	}
	return nil
}

// Console reads a serial console into a log and lets tests wait for
// output and type commands, as u-root's tests do with ExpectString.
type Console struct {
	conn net.Conn
	log  *os.File

	mu     sync.Mutex
	buf    bytes.Buffer // everything since the last Mark
	update chan struct{}
	closed bool
}

func newConsole(conn net.Conn, logPath string) *Console {
	log, _ := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	c := &Console{conn: conn, log: log, update: make(chan struct{})}
	go c.read()
	return c
}

func (c *Console) read() {
	b := make([]byte, 4096)
	for {
		n, err := c.conn.Read(b)
		c.mu.Lock()
		if n > 0 {
			c.buf.Write(b[:n])
			if c.log != nil {
				c.log.Write(b[:n])
			}
		}
		if err != nil {
			c.closed = true
		}
		close(c.update)
		c.update = make(chan struct{})
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Expect waits until re matches the console output since the last match
// (or Mark) and returns the match; later output stays for the next call.
func (c *Console) Expect(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		c.mu.Lock()
		out := c.buf.Bytes()
		if loc := re.FindSubmatchIndex(out); loc != nil {
			var m []string
			for i := 0; i+1 < len(loc); i += 2 {
				if loc[i] >= 0 {
					m = append(m, string(out[loc[i]:loc[i+1]]))
				} else {
					m = append(m, "")
				}
			}
			c.buf.Next(loc[1])
			c.mu.Unlock()
			return m, nil
		}
		closed, update := c.closed, c.update
		c.mu.Unlock()
		if closed {
			return nil, fmt.Errorf("console closed while waiting for %q", re)
		}
		select {
		case <-update:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %q on the console: %w", re, ctx.Err())
		}
	}
}

// ExpectString waits for s.
func (c *Console) ExpectString(ctx context.Context, s string) error {
	_, err := c.Expect(ctx, regexp.MustCompile(regexp.QuoteMeta(s)))
	return err
}

// Mark forgets the output so far.
func (c *Console) Mark() {
	c.mu.Lock()
	c.buf.Reset()
	c.mu.Unlock()
}

// Send types a line.
func (c *Console) Send(line string) error {
	_, err := io.WriteString(c.conn, line+"\n")
	return err
}

var runSeq struct {
	sync.Mutex
	n int
}

// Run types a shell command at a root prompt and returns its output and
// exit status, framed by unique markers.
func (c *Console) Run(ctx context.Context, cmd string) (string, int, error) {
	runSeq.Lock()
	runSeq.n++
	id := runSeq.n
	runSeq.Unlock()
	begin, end := fmt.Sprintf("=RB%dB=", id), fmt.Sprintf("=RB%dE=", id)
	// The markers are split so that the echo of the command line itself
	// doesn't match.
	line := fmt.Sprintf(`echo "=RB%d""B="; ( %s ) 2>&1; echo "=RB%d""E=$?"`, id, cmd, id)
	if err := c.Send(line); err != nil {
		return "", 0, err
	}
	re := regexp.MustCompile(regexp.QuoteMeta(begin) + `\r?\n((?s).*?)` + regexp.QuoteMeta(end) + `(\d+)`)
	m, err := c.Expect(ctx, re)
	if err != nil {
		return "", 0, fmt.Errorf("running %q: %w", cmd, err)
	}
	var status int
	fmt.Sscan(m[2], &status)
	return strings.ReplaceAll(m[1], "\r\n", "\n"), status, nil
}

// Close closes the console.
func (c *Console) Close() error {
	if c.log != nil {
		c.log.Close()
	}
	return c.conn.Close()
}
