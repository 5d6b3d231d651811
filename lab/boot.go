package lab

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// Generated file names.
const (
	// ubootScriptName is what U-Boot's distro boot fetches over TFTP
	// whatever DHCP says.
	ubootScriptName = "boot.scr.uimg"
	// ipxeScriptName is the iPXE script path, over HTTP.
	ipxeScriptName = "ipxe/boot.ipxe"
)

// DHCPClient is what DHCP tells about a machine asking for an address.
type DHCPClient struct {
	MAC net.HardwareAddr
	// Firmware is the client class: "bios", "efi32", "efi-x64",
	// "efi-arm64", "efi-arm32", "ipxe", "u-boot", "initramfs", "os" or
	// "unknown".
	Firmware    string
	Arch        string
	VendorClass string
}

// DHCPAnswer is the lab's decision for a DHCP client.
type DHCPAnswer struct {
	// IP is the board's fixed address, or zero for one from the dynamic
	// range.
	IP       netip.Addr
	Hostname string
	// BootFile is the boot program or script, empty for none.
	BootFile string
}

// pxeFirmware reports firmware that boots from the network.
func pxeFirmware(fw string) bool {
	switch fw {
	case "bios", "efi-x64", "efi-arm64", "efi-arm32", "ipxe", "u-boot":
		return true
	}
	return false
}

// DHCP decides what a DHCP client gets: known boards their reservation,
// name and boot program; unknown machines an address from the pool, and a
// boot program only in identify mode. Unknown network-booting machines are
// recorded for enrollment.
func (l *Lab) DHCP(ctx context.Context, c DHCPClient) DHCPAnswer {
	b := l.byMAC[c.MAC.String()]
	if b == nil {
		if !pxeFirmware(c.Firmware) {
			return DHCPAnswer{}
		}
		if l.unknownDue(c.MAC) {
			l.queueUnknown(Unknown{
				MAC: c.MAC, Firmware: c.Firmware, Arch: c.Arch, VendorClass: c.VendorClass, LastSeen: l.now(),
			})
			l.log.Info("unknown machine asks to boot", "mac", c.MAC.String(), "firmware", c.Firmware, "policy", string(l.cfg.Unknown))
		}
		if l.cfg.Unknown != UnknownIdentify {
			return DHCPAnswer{}
		}
		return DHCPAnswer{BootFile: l.bootFile(c.Firmware)}
	}
	fw := c.Firmware
	if fw == "ipxe" && b.Loader == "pxelinux" {
		return DHCPAnswer{IP: b.IP, Hostname: b.Name, BootFile: "pxelinux.0"}
	}
	file := l.bootFile(fw)
	if file == "" && pxeFirmware(fw) && l.unknownDue(c.MAC) {
		// The board gets an address and nothing to boot: say why, once
		// a minute, rather than leave it spinning in its firmware.
		l.log.Warn("no boot program for this firmware: boot the board through U-Boot or iPXE",
			"board", b.Name, "firmware", fw, "vendor_class", c.VendorClass)
	}
	return DHCPAnswer{IP: b.IP, Hostname: b.Name, BootFile: file}
}

// DHCPReply records a DHCP reply to a board. Replies with a boot program
// go to the firmware, before the boot starts (when the config is fetched):
// they wait in memory and open the timeline of the board's next boot.
// Replies without one (the initramfs, the booted system) belong to the
// current boot.
func (l *Lab) DHCPReply(ctx context.Context, mac net.HardwareAddr, typ string, ip netip.Addr, bootFile string) {
	b := l.byMAC[mac.String()]
	if b == nil {
		return
	}
	e := Event{Time: l.now(), Kind: "dhcp", Name: typ, Status: "ok"}
	if ip.IsValid() {
		e.Name += " " + ip.String()
	}
	if bootFile == "" {
		if rec, err := l.store.CurrentBoot(ctx, b.Name); err == nil && rec.Ended.IsZero() {
			l.event(ctx, rec.ID, e)
		}
		return
	}
	e.Name += " " + bootFile
	l.pendingMu.Lock()
	defer l.pendingMu.Unlock()
	p := l.pending[b.Name]
	if len(p) >= 16 { // a board that never fetches a config: keep the latest
		p = p[1:]
	}
	l.pending[b.Name] = append(p, e)
}

// takePending returns and forgets the DHCP events waiting for a board's
// next boot.
func (l *Lab) takePending(board string) []Event {
	l.pendingMu.Lock()
	defer l.pendingMu.Unlock()
	p := l.pending[board]
	delete(l.pending, board)
	return p
}

// unknownEvery bounds how often an unknown machine is written to the store
// (and a board whose firmware we can't boot is logged)
// and the log: every DISCOVER and REQUEST of a PXE firmware retrying in a
// loop would otherwise cost a commit and a log line each.
const unknownEvery = time.Minute

// unknownDue reports whether the unknown machine mac is due to be
// recorded again, and notes that it is.
func (l *Lab) unknownDue(mac net.HardwareAddr) bool {
	l.pendingMu.Lock()
	defer l.pendingMu.Unlock()
	now := l.now()
	if t, ok := l.unknownSeen[mac.String()]; ok && now.Sub(t) < unknownEvery {
		return false
	}
	if len(l.unknownSeen) > 4096 { // a flood of made-up MACs: start over
		clear(l.unknownSeen)
	}
	l.unknownSeen[mac.String()] = now
	return true
}

// unknownFlushDelay is how long sightings of unknown machines gather in
// memory before they go to the store in one transaction: a rack of new
// machines powering on costs one commit a second, not one per machine, and
// answering their DHCP waits for none.
const unknownFlushDelay = time.Second

// queueUnknown queues a sighting for the store, scheduling a flush.
func (l *Lab) queueUnknown(u Unknown) {
	l.unknownMu.Lock()
	defer l.unknownMu.Unlock()
	l.unknownQueue = append(l.unknownQueue, u)
	if l.unknownTimer == nil {
		l.unknownTimer = time.AfterFunc(unknownFlushDelay, func() {
			if err := l.Flush(context.Background()); err != nil {
				l.log.Error("recording unknown machines", "err", err)
			}
		})
	}
}

// Flush writes what the lab holds in memory to the store: the queued
// sightings of unknown machines. Call it before closing the store.
func (l *Lab) Flush(ctx context.Context) error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.unknownMu.Lock()
	if l.unknownTimer != nil {
		l.unknownTimer.Stop()
		l.unknownTimer = nil
	}
	q := l.unknownQueue
	l.unknownQueue = nil
	l.unknownMu.Unlock()
	if len(q) == 0 {
		return nil
	}
	if err := l.store.SeenUnknown(ctx, q...); err != nil {
		return fmt.Errorf("recording %d unknown machines: %w", len(q), err)
	}
	return nil
}

// Unknown lists the machines that asked to boot and are not in the
// inventory, newest first, including those not yet flushed to the store.
func (l *Lab) Unknown(ctx context.Context) ([]Unknown, error) {
	if err := l.Flush(ctx); err != nil {
		return nil, err
	}
	return l.store.Unknown(ctx)
}

// bootFile is the boot program for a firmware class.
func (l *Lab) bootFile(fw string) string {
	switch fw {
	case "bios":
		return "lpxelinux.0"
	case "efi-x64":
		return "ipxe.efi"
	case "ipxe":
		return l.httpURL(ipxeScriptName)
	case "u-boot":
		return ubootScriptName
	}
	return ""
}

func (l *Lab) httpURL(path string) string {
	return fmt.Sprintf("http://%s/%s", netip.AddrPortFrom(l.cfg.Address, l.cfg.HTTPPort), path)
}

var (
	macFileRE  = regexp.MustCompile(`^01-([0-9a-f]{2}(?:-[0-9a-f]{2}){5})$`)
	uuidFileRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	hexIPRE    = regexp.MustCompile(`^[0-9A-F]{1,8}$`)
	defaultRE  = regexp.MustCompile(`^default(-[a-z0-9_-]+)?$`)
)

// pxelinuxConfig answers pxelinux.cfg/NAME for the machine at peer. A
// board gets its own config under any name PXELINUX, iPXE or U-Boot tries
// (01-MAC, UUID, hex IP prefixes, default, default-ARCH-SOC...), but the
// 01-MAC name only for its own MAC. Each config comes with the start of
// a new boot, for when it is delivered.
func (l *Lab) pxelinuxConfig(name string, peer netip.Addr) ([]byte, func(context.Context) error, error) {
	peer = peer.Unmap()
	name = strings.ToLower(name)
	upper := strings.ToUpper(name)
	switch {
	case macFileRE.MatchString(name), uuidFileRE.MatchString(name), hexIPRE.MatchString(upper), defaultRE.MatchString(name):
	default:
		return nil, nil, fmt.Errorf("pxelinux.cfg/%s: %w", name, fs.ErrNotExist)
	}
	b, mac, ok := l.boardAt(peer)
	if !ok {
		l.log.Warn("boot config refused: address not on the boot network", "peer", peer.String(), "file", name)
		return nil, nil, fmt.Errorf("pxelinux.cfg/%s for %s: no lease: %w", name, peer, fs.ErrNotExist)
	}
	if m := macFileRE.FindStringSubmatch(name); m != nil && strings.ReplaceAll(m[1], "-", ":") != mac.String() {
		l.log.Warn("boot config refused: another machine's MAC", "peer", peer.String(), "mac", mac.String(), "file", name)
		return nil, nil, fmt.Errorf("pxelinux.cfg/%s for %s (%s): %w", name, peer, mac, fs.ErrNotExist)
	}
	if b == nil {
		return l.identifyConfig(mac, peer, "pxelinux", "pxelinux.cfg/"+name)
	}
	rec, k, err := l.prepareBoot(b, peer)
	if err != nil {
		return nil, nil, err
	}
	start := func(ctx context.Context) error { return l.startBoot(ctx, rec, "pxelinux.cfg/"+name) }
	return pxelinuxText(b.Name, k.Kernel, k.Initrd, l.cmdline(b, rec)), start, nil
}

// pxelinuxText renders a PXELINUX-format config that PXELINUX, iPXE's
// pxe support and U-Boot's `pxe` all read. IPAPPEND 2 adds BOOTIF=.
func pxelinuxText(label, kernel, initrd, cmdline string) []byte {
	return fmt.Appendf(nil, `# generated by rackboot
DEFAULT %[1]s
PROMPT 0
TIMEOUT 0
LABEL %[1]s
  KERNEL %[2]s
  INITRD %[3]s
  APPEND %[4]s
  IPAPPEND 2
`, label, kernel, initrd, cmdline)
}

// cmdline is the kernel command line of a boot.
func (l *Lab) cmdline(b *Board, rec BootRecord) string {
	args := []string{
		"console=" + b.Console,
		"rackboot.server=" + l.cfg.Address.String(),
		"rackboot.http=" + l.httpURL(""),
		"rackboot.board=" + b.Name,
		"rackboot.token=" + rec.Token,
		fmt.Sprintf("rackboot.nbd=nbd://%s/%s", netip.AddrPortFrom(l.cfg.Address, l.cfg.NBDPort), rec.Token),
	}
	if b.BuildDisk != "" {
		// A build can hide the end of a SATA disk from the kernel (a
		// host protected area, hdparm -N p...) and read it back in a
		// later boot: have the kernel show, and the wipe cover, all
		// of it.
		args = append(args, "rackboot.disk="+b.BuildDisk, "libata.ignore_hpa=1")
	}
	for _, extra := range []string{l.cfg.Cmdline, b.Cmdline} {
		if extra != "" {
			args = append(args, extra)
		}
	}
	return strings.Join(args, " ")
}

// identifyConfig boots an unknown machine into the initramfs in identify
// mode, if the policy says so: it reports itself and powers off. The boot
// starts when config is delivered.
func (l *Lab) identifyConfig(mac net.HardwareAddr, peer netip.Addr, kind, config string) ([]byte, func(context.Context) error, error) {
	if l.cfg.Unknown != UnknownIdentify {
		l.log.Info("unknown machine refused a boot config", "mac", mac.String(), "peer", peer.String())
		return nil, nil, fmt.Errorf("boot config for unknown %s: %w", mac, fs.ErrNotExist)
	}
	rec := BootRecord{
		Board: "unknown-" + strings.ReplaceAll(mac.String(), ":", ""), Token: newToken(),
		IP: peer, MAC: mac, Identify: true,
	}
	start := func(ctx context.Context) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		rec.Started = l.now()
		if _, err := l.store.StartBoot(ctx, rec); err != nil {
			return fmt.Errorf("starting identify boot of %s: %w", mac, err)
		}
		l.log.Info("booting unknown machine to identify it", "mac", mac.String(), "peer", peer.String(), "config", config)
		return nil
	}
	arch := l.cfg.IdentifyArch
	k := l.cfg.Kernels[arch]
	cmd := strings.Join([]string{
		"console=" + DefaultConsole[arch],
		"rackboot.server=" + l.cfg.Address.String(),
		"rackboot.http=" + l.httpURL(""),
		"rackboot.token=" + rec.Token,
		"rackboot.mode=identify",
	}, " ")
	if kind == "ipxe" {
		return ipxeText(l.httpURL(k.Kernel), l.httpURL(k.Initrd), cmd), start, nil
	}
	return pxelinuxText("identify", k.Kernel, k.Initrd, cmd), start, nil
}

// ipxeScript answers the iPXE script for the machine at peer, with the
// start of a new boot for when it is delivered.
func (l *Lab) ipxeScript(peer netip.Addr) ([]byte, func(context.Context) error, error) {
	peer = peer.Unmap()
	b, mac, ok := l.boardAt(peer)
	if !ok {
		l.log.Warn("iPXE script refused: address not on the boot network", "peer", peer.String())
		return nil, nil, fmt.Errorf("iPXE script for %s: no lease: %w", peer, fs.ErrNotExist)
	}
	if b == nil {
		return l.identifyConfig(mac, peer, "ipxe", ipxeScriptName)
	}
	rec, k, err := l.prepareBoot(b, peer)
	if err != nil {
		return nil, nil, err
	}
	start := func(ctx context.Context) error { return l.startBoot(ctx, rec, ipxeScriptName) }
	return ipxeText(l.httpURL(k.Kernel), l.httpURL(k.Initrd), l.cmdline(b, rec)+" BOOTIF=01-${netX/mac:hexhyp}"), start, nil
}

func ipxeText(kernel, initrd, cmdline string) []byte {
	return fmt.Appendf(nil, `#!ipxe
# generated by rackboot
kernel %s initrd=initrd %s
initrd --name initrd %s
boot
`, kernel, cmdline, initrd)
}
