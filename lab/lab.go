package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rackboot/rackboot/nbd/cow"
)

// Arch is a board architecture.
type Arch string

// The architectures rackboot boots.
const (
	AMD64 Arch = "amd64"
	ARM64 Arch = "arm64"
	ARMHF Arch = "armhf"
)

// DefaultConsole is the kernel console of each architecture's boards when
// the configuration names none.
var DefaultConsole = map[Arch]string{
	AMD64: "ttyS0,115200",
	ARM64: "ttyAMA0,115200",
	ARMHF: "ttyAMA0,115200",
}

// Board is a board of the inventory.
type Board struct {
	Name      string
	MAC       net.HardwareAddr
	Arch      Arch
	IP        netip.Addr // fixed address, or zero for one from the dynamic range
	Image     string
	Cmdline   string // extra kernel command-line arguments
	BuildDisk string // build-disk selector for the initramfs
	Console   string // kernel console=, default by arch
	// Loader is what iPXE firmware gets: "ipxe" (default, the HTTP
	// script) or "pxelinux" (PXELINUX over TFTP).
	Loader string
}

// KernelFiles are the kernel and initramfs an architecture boots, as paths
// in the boot tree.
type KernelFiles struct {
	Kernel string
	Initrd string
}

// UnknownPolicy says what unknown machines that PXE-boot get.
type UnknownPolicy string

const (
	// UnknownIgnore records them and gives them no boot file.
	UnknownIgnore UnknownPolicy = "ignore"
	// UnknownIdentify boots them into the initramfs in identify mode:
	// it reports the machine and powers off. No root, no disk writes.
	UnknownIdentify UnknownPolicy = "identify"
)

// Config is what the Lab needs to know.
type Config struct {
	// Address is the appliance's address as boards reach it.
	Address netip.Addr
	// NBDPort and HTTPPort are where boards find those servers.
	NBDPort, HTTPPort uint16
	Boards            []Board
	// Kernels per architecture.
	Kernels map[Arch]KernelFiles
	// Cmdline is appended to every board's kernel command line.
	Cmdline string
	Unknown UnknownPolicy
	// IdentifyArch is the architecture unknown machines are booted as in
	// identify mode, when their firmware doesn't tell.
	IdentifyArch Arch
}

// ImageVersion is one version of a master image as a boot uses it.
type ImageVersion struct {
	// Ref names it exactly: "NAME@VERSION" for catalog images, "NAME" for
	// images fixed in the configuration. A boot records it, and keeps its
	// version until its next boot whatever is activated meanwhile.
	Ref string
	// Base is the image, opened read-only.
	Base *cow.Image
	// Kernels are the kernel and initramfs this version boots per
	// architecture, as paths the lab serves; an architecture missing here
	// uses Config.Kernels.
	Kernels map[Arch]KernelFiles
}

// Images resolves image names. Implementations are safe for concurrent use.
type Images interface {
	// Current returns the version of image name a boot starting now uses.
	Current(name string) (ImageVersion, error)
	// Get returns the version ref names.
	Get(ref string) (ImageVersion, error)
}

// Neighbors tells which MAC an address belongs to on the boot network: the
// DHCP server's current leases, or the kernel's neighbour table.
type Neighbors interface {
	MACFor(ip netip.Addr) (net.HardwareAddr, bool)
}

// NeighborsFunc adapts a function to Neighbors.
type NeighborsFunc func(ip netip.Addr) (net.HardwareAddr, bool)

// MACFor calls f.
func (f NeighborsFunc) MACFor(ip netip.Addr) (net.HardwareAddr, bool) { return f(ip) }

// Lab is the one owner of board state: the inventory, boots and their
// tokens, which copy-on-write session each boot owns, and who may fetch
// what. It is safe for concurrent use.
type Lab struct {
	cfg       Config
	store     Store
	sessions  *cow.Store
	images    Images
	tree      *os.Root
	catalog   *os.Root
	neighbors Neighbors
	log       *slog.Logger
	now       func() time.Time

	byMAC  map[string]*Board
	byName map[string]*Board

	mu sync.Mutex // serialises boot starts

	pendingMu   sync.Mutex
	pending     map[string][]Event   // DHCP events per board, for its next boot
	unknownSeen map[string]time.Time // when each unknown MAC was last recorded

	// Sightings of unknown machines waiting for the store (queueUnknown).
	// unknownMu guards the queue and the timer only, so that queueing
	// never waits for a write; flushMu serialises flushes, so that a
	// listing after Flush sees every sighting queued before it, even one
	// a concurrent flush is still writing.
	unknownMu    sync.Mutex
	unknownQueue []Unknown
	unknownTimer *time.Timer
	flushMu      sync.Mutex
}

var boardNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Options are the Lab's collaborators.
type Options struct {
	Store    Store
	Sessions *cow.Store
	Images   Images
	Tree     *os.Root // the static boot tree
	// Catalog is the image catalog's directory, for the boot files of
	// catalog images (served under "images/NAME/VERSION/boot/").
	Catalog   *os.Root
	Neighbors Neighbors
	Logger    *slog.Logger
	// Now is a test seam; nil means time.Now.
	Now func() time.Time
}

// New checks cfg, records the inventory in the store and returns the Lab.
func New(ctx context.Context, cfg Config, o Options) (*Lab, error) {
	l := &Lab{
		cfg: cfg, store: o.Store, sessions: o.Sessions, images: o.Images, tree: o.Tree, catalog: o.Catalog,
		neighbors: o.Neighbors, log: o.Logger, now: o.Now,
		byMAC: make(map[string]*Board), byName: make(map[string]*Board),
		pending: make(map[string][]Event), unknownSeen: make(map[string]time.Time),
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.neighbors == nil {
		l.neighbors = NeighborsFunc(func(netip.Addr) (net.HardwareAddr, bool) { return nil, false })
	}
	if l.cfg.Unknown == "" {
		l.cfg.Unknown = UnknownIgnore
	}
	if l.cfg.IdentifyArch == "" {
		l.cfg.IdentifyArch = AMD64
	}
	for i := range cfg.Boards {
		b := &cfg.Boards[i]
		if !boardNameRE.MatchString(b.Name) {
			return nil, fmt.Errorf("board name %q: want [A-Za-z0-9][A-Za-z0-9._-]{0,62}", b.Name)
		}
		if l.byName[b.Name] != nil {
			return nil, fmt.Errorf("board %s listed twice", b.Name)
		}
		if l.byMAC[b.MAC.String()] != nil {
			return nil, fmt.Errorf("board %s: MAC %s already belongs to %s", b.Name, b.MAC, l.byMAC[b.MAC.String()].Name)
		}
		v, err := l.images.Current(b.Image)
		if err != nil {
			return nil, fmt.Errorf("board %s: image %q: %w", b.Name, b.Image, err)
		}
		if _, err := l.kernel(b, v); err != nil {
			return nil, err
		}
		if b.Console == "" {
			b.Console = DefaultConsole[b.Arch]
		}
		l.byName[b.Name] = b
		l.byMAC[b.MAC.String()] = b
	}
	if err := l.store.SyncBoards(ctx, cfg.Boards); err != nil {
		return nil, fmt.Errorf("recording boards: %w", err)
	}
	return l, nil
}

// BoardByMAC returns the board with that MAC.
func (l *Lab) BoardByMAC(mac net.HardwareAddr) (*Board, bool) {
	b, ok := l.byMAC[mac.String()]
	return b, ok
}

// Boards returns the inventory.
func (l *Lab) Boards() []Board { return l.cfg.Boards }

// Store returns the lab's state store, for listings.
func (l *Lab) Store() Store { return l.store }

// sessionName names a boot's copy-on-write session. It is derived from
// the token one way, so that listings of sessions reveal nothing of it.
func sessionName(board, token string) string {
	h := sha256.Sum256([]byte("rackboot session " + token))
	return board + "@" + hex.EncodeToString(h[:8])
}

// newToken returns 128 random bits in hex: the boot's capability.
func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// kernel returns the kernel and initramfs board b boots with image v.
func (l *Lab) kernel(b *Board, v ImageVersion) (KernelFiles, error) {
	if k, ok := v.Kernels[b.Arch]; ok {
		return k, nil
	}
	if k, ok := l.cfg.Kernels[b.Arch]; ok {
		return k, nil
	}
	return KernelFiles{}, fmt.Errorf("board %s: image %s has no %s kernel, and boot.kernels names none", b.Name, v.Ref, b.Arch)
}

// prepareBoot readies a new boot of board b at ip: a fresh token and the
// image version active now. Nothing changes until the boot starts (see
// File.Delivered).
func (l *Lab) prepareBoot(b *Board, ip netip.Addr) (BootRecord, KernelFiles, error) {
	v, err := l.images.Current(b.Image)
	if err != nil {
		return BootRecord{}, KernelFiles{}, fmt.Errorf("board %s: image %q: %w", b.Name, b.Image, err)
	}
	k, err := l.kernel(b, v)
	if err != nil {
		return BootRecord{}, KernelFiles{}, err
	}
	rec := BootRecord{Board: b.Name, Token: newToken(), Image: v.Ref, IP: ip, MAC: b.MAC}
	rec.Session = sessionName(b.Name, rec.Token)
	return rec, k, nil
}

// startBoot starts a boot prepared by prepareBoot: its token becomes the
// board's current one, with a fresh copy-on-write session, and the previous
// boot's session is discarded. config names the file that started it.
func (l *Lab) startBoot(ctx context.Context, rec BootRecord, config string) error {
	l.mu.Lock()
	rec.Started = l.now()
	rec, err := l.store.StartBoot(ctx, rec)
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("starting boot of %s: %w", rec.Board, err)
	}
	// Discard every earlier layer of this board: all of the owner's
	// sessions but its current boot's (the new session is created on
	// first attach, so "except the newest" would be wrong). Outside l.mu:
	// a discard waits for the old session's requests in flight, and
	// other boards' boots mustn't wait with it. If another boot of this
	// board started meanwhile, the current one is that, and it is kept.
	keep := rec.Session
	if cur, err := l.store.CurrentBoot(ctx, rec.Board); err == nil {
		keep = cur.Session
	}
	if err := l.discardOthers(rec.Board, keep); err != nil {
		l.log.Error("discarding previous boot's layer", "board", rec.Board, "err", err)
	}
	for _, e := range l.takePending(rec.Board) {
		l.event(ctx, rec.ID, e)
	}
	l.event(ctx, rec.ID, Event{Kind: "config", Name: config, Status: "ok"})
	l.log.Info("boot started", "board", rec.Board, "boot", rec.ID, "ip", rec.IP.String(), "image", rec.Image)
	return nil
}

func (l *Lab) discardOthers(owner, keep string) error {
	all, err := l.sessions.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range all {
		if s.Owner == owner && s.Name != keep {
			if err := l.sessions.Discard(s.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			} else {
				l.log.Info("layer discarded", "board", owner, "session", s.Name)
			}
		}
	}
	return errors.Join(errs...)
}

// BoardAt returns the name of the board at ip, if it is one.
func (l *Lab) BoardAt(ip netip.Addr) (string, bool) {
	b, _, ok := l.boardAt(ip)
	if !ok || b == nil {
		return "", false
	}
	return b.Name, true
}

// peerMAC returns the MAC the boot network says ip belongs to.
func (l *Lab) peerMAC(ip netip.Addr) (net.HardwareAddr, bool) {
	return l.neighbors.MACFor(ip.Unmap())
}

// boardAt returns the board at ip, or nil and the MAC if the machine
// there is unknown.
func (l *Lab) boardAt(ip netip.Addr) (*Board, net.HardwareAddr, bool) {
	mac, ok := l.peerMAC(ip)
	if !ok {
		return nil, nil, false
	}
	return l.byMAC[mac.String()], mac, true
}

// OpenSession returns the copy-on-write session for an NBD export name,
// which is a boot token, if the client at peer may have it: the token must
// be its board's current boot and peer the address that boot started at.
// Anything else is fs.ErrNotExist, so that nobody learns which tokens
// exist.
func (l *Lab) OpenSession(ctx context.Context, export string, peer netip.Addr) (*cow.Session, BootRecord, error) {
	notExist := fmt.Errorf("boot export for %s: %w", peer, fs.ErrNotExist) // never the name: it may be a live token
	rec, err := l.store.BootByToken(ctx, export)
	if err != nil {
		return nil, BootRecord{}, notExist
	}
	if rec.Identify || rec.IP != peer.Unmap() {
		l.log.Warn("NBD export refused: wrong address", "board", rec.Board, "peer", peer.String(), "ip", rec.IP.String())
		return nil, BootRecord{}, notExist
	}
	cur, err := l.store.CurrentBoot(ctx, rec.Board)
	if err != nil || cur.ID != rec.ID {
		l.log.Warn("NBD export refused: boot is over", "board", rec.Board, "boot", rec.ID, "peer", peer.String())
		return nil, BootRecord{}, notExist
	}
	v, err := l.images.Get(rec.Image)
	if err != nil {
		return nil, BootRecord{}, fmt.Errorf("boot %d of %s: image %s: %w", rec.ID, rec.Board, rec.Image, err)
	}
	s, err := l.sessions.Open(rec.Session, v.Base, cow.SessionSpec{Owner: rec.Board, Image: rec.Image})
	if err != nil {
		return nil, BootRecord{}, err
	}
	l.event(ctx, rec.ID, Event{Kind: "nbd", Name: "attach", Status: "ok"})
	return s, rec, nil
}

// event appends to a boot's timeline, logging failures.
func (l *Lab) event(ctx context.Context, bootID int64, e Event) {
	e.BootID = bootID
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	if err := l.store.AddEvent(ctx, e); err != nil {
		l.log.Error("recording boot event", "boot", bootID, "err", err)
	}
}

// currentBootAt returns the current boot of the board at ip, if any.
func (l *Lab) currentBootAt(ctx context.Context, ip netip.Addr) (BootRecord, bool) {
	b, _, ok := l.boardAt(ip)
	if !ok || b == nil {
		return BootRecord{}, false
	}
	rec, err := l.store.CurrentBoot(ctx, b.Name)
	if err != nil || rec.IP != ip.Unmap() {
		return BootRecord{}, false
	}
	return rec, true
}

// Transfer records a file served to peer (over TFTP or HTTP) in the
// timeline of its board's current boot.
func (l *Lab) Transfer(ctx context.Context, kind, file string, peer netip.Addr, bytes int64, dur time.Duration, err error) {
	rec, ok := l.currentBootAt(ctx, peer)
	if !ok {
		return
	}
	e := Event{Kind: kind, Name: file, Status: "ok", Bytes: bytes, Duration: dur}
	if err != nil {
		e.Status, e.Error = "failed", err.Error()
	}
	l.event(ctx, rec.ID, e)
}

// Step is a boot step the initramfs or agent reports.
type Step struct {
	Name     string        `json:"step"`
	Status   string        `json:"status"` // running, ok, failed
	Duration time.Duration `json:"duration_ns"`
	Error    string        `json:"error,omitempty"`
	// Detail is optional JSON the step carries: the machine's facts in
	// identify mode, the agent's capabilities in its heartbeat.
	Detail json.RawMessage `json:"detail,omitempty"`
}

// MaxDetail bounds Step.Detail.
const MaxDetail = 16 << 10

// redactedToken replaces a boot's token in what its board reports.
const redactedToken = "<token>"

// ErrBadToken is returned by Report for a token that isn't the current
// boot of the board at the reporting address.
var ErrBadToken = errors.New("not the current boot")

// Report records a boot step reported with token from peer.
func (l *Lab) Report(ctx context.Context, token string, peer netip.Addr, s Step) error {
	rec, err := l.store.BootByToken(ctx, token)
	if err != nil || rec.IP != peer.Unmap() {
		return fmt.Errorf("report from %s: %w", peer, ErrBadToken)
	}
	if !rec.Identify {
		if cur, err := l.store.CurrentBoot(ctx, rec.Board); err != nil || cur.ID != rec.ID {
			return fmt.Errorf("report for boot %d of %s: %w", rec.ID, rec.Board, ErrBadToken)
		}
	}
	if len(s.Name) > 64 || len(s.Status) > 16 || len(s.Error) > 4096 || len(s.Detail) > MaxDetail {
		return fmt.Errorf("report from %s: oversized fields: %w", peer, fs.ErrInvalid)
	}
	// A board may quote its token in an error (a kernel command line, a
	// URL); reports are shown to anyone through the API and logged.
	s.Error = strings.ReplaceAll(s.Error, token, redactedToken)
	s.Detail = json.RawMessage(strings.ReplaceAll(string(s.Detail), token, redactedToken))
	log := l.log.With("board", rec.Board, "boot", rec.ID)
	if s.Status == "failed" {
		log.Warn("boot step failed", "step", s.Name, "err", s.Error)
	} else {
		log.Info("boot step", "step", s.Name, "status", s.Status, "dur", s.Duration)
	}
	l.event(ctx, rec.ID, Event{Kind: "step", Name: s.Name, Status: s.Status, Duration: s.Duration, Error: s.Error, Detail: string(s.Detail)})
	return nil
}

// File is a boot file: static from the tree or generated for one board.
type File struct {
	io.ReadSeeker
	io.Closer
	Size    int64
	ModTime time.Time

	// start starts the boot a generated config belongs to; nil for
	// every other file.
	start func(context.Context) error
	once  sync.Once
	err   error
}

// Delivered says that the machine received the whole file at the address
// it asked from. A generated boot config (a PXELINUX-format config, the
// iPXE script) starts its boot only then: its token becomes the board's
// current one and the previous boot's layer is discarded. A transport
// calls it once it holds proof of the peer's address: HTTP for a GET, as
// TCP's handshake proved the address; TFTP when the last block is
// acknowledged. A TFTP request alone proves nothing, since anyone on the
// network can forge a datagram's source, and one forged request must not
// end another board's boot. For other files Delivered does nothing. Later
// calls return the first one's result.
func (f *File) Delivered(ctx context.Context) error {
	f.once.Do(func() {
		if f.start != nil {
			f.err = f.start(ctx)
		}
	})
	return f.err
}

func memFile(b []byte, t time.Time) *File {
	return &File{ReadSeeker: bytes.NewReader(b), Closer: io.NopCloser(nil), Size: int64(len(b)), ModTime: t}
}

// configFile is a generated boot config that starts its boot when
// delivered.
func configFile(b []byte, t time.Time, start func(context.Context) error) *File {
	f := memFile(b, t)
	f.start = start
	return f
}

// OpenFile returns the boot file at path (clean, slash-separated, relative)
// for the machine at peer: a generated boot config, iPXE script or U-Boot
// script, or a file of the static tree. A boot config's boot starts when
// the file is delivered (File.Delivered). Errors wrap fs.ErrNotExist or
// fs.ErrPermission.
func (l *Lab) OpenFile(ctx context.Context, path string, peer netip.Addr) (*File, error) {
	// Only clean relative paths: "..", "." or empty elements and
	// leading or trailing slashes are refused, even where os.Root would
	// stay inside the tree, so that checks on the path's elements (the
	// catalog's boot/ below) see what is opened. Over HTTP an encoded
	// %2F gets "boot/../x" past the router's cleaning.
	if !fs.ValidPath(path) || path == "." {
		return nil, fmt.Errorf("%q: not a clean path: %w", path, fs.ErrPermission)
	}
	switch {
	case strings.HasPrefix(path, "pxelinux.cfg/"):
		b, start, err := l.pxelinuxConfig(strings.TrimPrefix(path, "pxelinux.cfg/"), peer)
		if err != nil {
			return nil, err
		}
		return configFile(b, l.now(), start), nil
	case path == ubootScriptName:
		return memFile(ubootScript(), time.Unix(0, 0)), nil
	case path == ipxeScriptName:
		b, start, err := l.ipxeScript(peer)
		if err != nil {
			return nil, err
		}
		return configFile(b, l.now(), start), nil
	}
	root, rel := l.tree, path
	if p, ok := strings.CutPrefix(path, "images/"); ok && l.catalog != nil {
		// Catalog images' kernels: images/NAME/VERSION/boot/ARCH/FILE.
		if parts := strings.Split(p, "/"); len(parts) < 4 || parts[2] != "boot" {
			return nil, fmt.Errorf("%s: %w", path, fs.ErrNotExist)
		}
		root, rel = l.catalog, p
	}
	if root == nil {
		return nil, fmt.Errorf("%s: no boot tree: %w", path, fs.ErrNotExist)
	}
	f, err := root.Open(rel)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		// Escapes from the tree (.., symlinks out) and the like.
		return nil, fmt.Errorf("%s: %w: %w", path, fs.ErrPermission, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file: %w", path, fs.ErrNotExist)
	}
	return &File{ReadSeeker: f, Closer: f, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// StaticImages are images fixed in the configuration: one version each,
// booted with Config.Kernels.
type StaticImages map[string]*cow.Image

// Current implements Images.
func (s StaticImages) Current(name string) (ImageVersion, error) { return s.Get(name) }

// Get implements Images.
func (s StaticImages) Get(ref string) (ImageVersion, error) {
	img, ok := s[ref]
	if !ok {
		return ImageVersion{}, fmt.Errorf("image %q: %w", ref, fs.ErrNotExist)
	}
	return ImageVersion{Ref: ref, Base: img}, nil
}
