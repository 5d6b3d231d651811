package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/rackboot/rackboot/config"
	"github.com/rackboot/rackboot/dhcp"
	"github.com/rackboot/rackboot/images"
	"github.com/rackboot/rackboot/lab"
	"github.com/rackboot/rackboot/nbd"
	"github.com/rackboot/rackboot/nbd/cow"
	"github.com/rackboot/rackboot/tftp"
	"github.com/rackboot/rackboot/web"
)

// runServe is `rackboot serve`: the appliance.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/rackboot/rackboot.yaml", "configuration file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.Level()}))
	return serve(ctx, cfg, log)
}

// appliance is everything `serve` runs, wired together.
type appliance struct {
	cfg      *config.Config
	log      *slog.Logger
	sessions *cow.Store
	store    *lab.SQLite
	images   lab.StaticImages
	tree     *os.Root
	lab      *lab.Lab
	catalog  *images.Catalog
	dhcp     []*dhcp.Server
	closers  []func() error
}

func (a *appliance) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		if err := a.closers[i](); err != nil {
			a.log.Error("closing", "err", err)
		}
	}
}

// serve runs every server of the appliance until ctx is done, then shuts
// them down cleanly: stop accepting, finish in-flight requests, sync the
// write layers.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	a := &appliance{cfg: cfg, log: log}
	defer a.close()
	if err := a.open(ctx); err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	for _, d := range a.dhcp {
		g.Go(func() error { return d.ListenAndServe(ctx) })
		if d.Mode == dhcp.ModeFull {
			// Debian's iPXE waits ~15 s for IPv6 autoconfiguration
			// unless a router advertisement answers it.
			ra := &dhcp.Advertiser{Interface: d.Interface, Logger: log.With("srv", "ra")}
			g.Go(func() error { return ra.ListenAndServe(ctx) })
		}
	}
	nbdSrv := &nbd.Server{
		Resolver:              labResolver{lab: a.lab, images: a.images},
		Logger:                log.With("srv", "nbd"),
		MaxConnections:        cfg.NBD.MaxConnections,
		MaxConnectionsPerPeer: cfg.NBD.MaxConnectionsPerPeer,
		DrainTimeout:          cfg.NBD.DrainTimeout,
	}
	g.Go(func() error { return nbdSrv.ListenAndServe(ctx, cfg.NBD.Listen) })
	httpSrv := &web.Server{Lab: a.lab, Logger: log.With("srv", "http")}
	g.Go(func() error { return httpSrv.ListenAndServe(ctx, cfg.HTTP.Listen) })
	if cfg.TFTP.Listen != "off" {
		tftpSrv := &tftp.Server{
			// A *lab.File is a tftp.Deliverer: a boot config starts its
			// boot when the board acknowledges it.
			Handler: func(ctx context.Context, path string, peer netip.AddrPort) (io.ReadCloser, int64, error) {
				f, err := a.lab.OpenFile(ctx, path, peer.Addr())
				if err != nil {
					return nil, 0, err
				}
				return f, f.Size, nil
			},
			OnTransfer: func(tr tftp.Transfer) {
				a.lab.Transfer(context.WithoutCancel(ctx), "tftp", tr.Path, tr.Peer.Addr(), tr.Bytes, tr.Duration, tr.Err)
			},
			Logger: log.With("srv", "tftp"),
		}
		g.Go(func() error { return tftpSrv.ListenAndServe(ctx, cfg.TFTP.Listen) })
	}
	log.Info("rackboot serving", "version", version, "address", a.address().String(),
		"nbd", cfg.NBD.Listen, "http", cfg.HTTP.Listen, "tftp", cfg.TFTP.Listen, "boards", len(cfg.Boards), "state", cfg.StateDir,
		"procs", runtime.GOMAXPROCS(0))
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	if err == nil {
		log.Info("rackboot stopped")
	}
	return err
}

// open opens the state and builds the lab.
func (a *appliance) open(ctx context.Context) error {
	cfg := a.cfg
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	sessions, err := cow.OpenStore(cfg.StateDir, cow.Options{})
	if err != nil {
		return err
	}
	a.sessions = sessions
	a.closers = append(a.closers, sessions.Close)
	store, err := lab.OpenSQLite(ctx, filepath.Join(cfg.StateDir, "rackboot.db"))
	if err != nil {
		return err
	}
	a.store = store
	a.closers = append(a.closers, store.Close)
	a.images = make(lab.StaticImages)
	for _, im := range cfg.Images {
		img, err := cow.OpenImage(im.Path)
		if err != nil {
			return fmt.Errorf("image %s: %w", im.Name, err)
		}
		a.images[im.Name] = img
		a.closers = append(a.closers, img.Close)
	}
	cat, err := images.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	a.catalog = cat
	catRoot, err := os.OpenRoot(cat.Dir())
	if err != nil {
		return fmt.Errorf("image catalog: %w", err)
	}
	a.closers = append(a.closers, catRoot.Close)
	if cfg.Boot.Tree != "" {
		tree, err := os.OpenRoot(cfg.Boot.Tree)
		if err != nil {
			return fmt.Errorf("boot tree: %w", err)
		}
		a.tree = tree
		a.closers = append(a.closers, tree.Close)
	}
	addr := a.address()
	if !addr.IsValid() && len(cfg.Boards) > 0 {
		return errors.New("no appliance address: set address, or dhcp.interfaces with an IPv4 address")
	}
	var boards []lab.Board
	for _, b := range cfg.Boards {
		boards = append(boards, lab.Board{
			Name: b.Name, MAC: b.HardwareAddr(), Arch: lab.Arch(b.Arch), IP: b.IP, Image: b.Image,
			Cmdline: b.Cmdline, BuildDisk: b.BuildDisk, Console: b.Console, Loader: b.Loader,
		})
	}
	kernels := make(map[lab.Arch]lab.KernelFiles)
	for arch, k := range cfg.Boot.Kernels {
		kernels[lab.Arch(arch)] = lab.KernelFiles{Kernel: k.Kernel, Initrd: k.Initrd}
	}
	// The DHCP servers know which MAC holds which address; the kernel's
	// ARP table covers proxy mode, where the site's server does.
	neighbors := []lab.Neighbors{}
	if cfg.DHCP.Mode != "off" {
		for _, name := range cfg.DHCP.Interfaces {
			d, err := a.dhcpServer(name)
			if err != nil {
				return err
			}
			a.dhcp = append(a.dhcp, d)
			neighbors = append(neighbors, d)
		}
	}
	neighbors = append(neighbors, lab.KernelNeighbors())
	l, err := lab.New(ctx, lab.Config{
		Address:  addr,
		NBDPort:  listenPort(cfg.NBD.Listen),
		HTTPPort: listenPort(cfg.HTTP.Listen),
		Boards:   boards,
		Kernels:  kernels,
		Cmdline:  cfg.Boot.Cmdline,
		Unknown:  lab.UnknownPolicy(cfg.Boot.UnknownBoards),
	}, lab.Options{
		Store: store, Sessions: sessions, Images: &imageSource{static: a.images, catalog: cat}, Tree: a.tree, Catalog: catRoot,
		Neighbors: lab.ChainNeighbors(neighbors...),
		Logger:    a.log.With("srv", "lab"),
	})
	if err != nil {
		return err
	}
	a.lab = l
	// Closers run last first: the lab's queued writes reach the store
	// before it closes.
	a.closers = append(a.closers, func() error { return l.Flush(context.Background()) })
	for _, d := range a.dhcp {
		d.Booter = dhcpBooter{l}
		d.OnReply = func(r dhcp.Reply) { l.DHCPReply(ctx, r.MAC, r.Type, r.IP, r.BootFile) }
	}
	return nil
}

// dhcpServer configures the DHCP server of one interface; its Booter is
// set once the lab exists.
func (a *appliance) dhcpServer(iface string) (*dhcp.Server, error) {
	cfg := a.cfg.DHCP
	ip, subnet, err := interfaceIPv4(iface)
	if err != nil {
		return nil, fmt.Errorf("dhcp interface: %w", err)
	}
	d := &dhcp.Server{
		Interface:    iface,
		ServerIP:     ip,
		Subnet:       subnet,
		Router:       cfg.Router,
		DNS:          cfg.DNS,
		LeaseTime:    cfg.LeaseTime,
		Leases:       leaseStore{a.store},
		SkipProbe:    cfg.Probe != nil && !*cfg.Probe,
		ConflictWait: cfg.ConflictCheck,
		Logger:       a.log.With("srv", "dhcp", "interface", iface),
	}
	if cfg.Mode == "full" {
		d.Mode = dhcp.ModeFull
		d.RangeStart, d.RangeEnd = cfg.RangeStart, cfg.RangeEnd
	}
	return d, nil
}

// dhcpBooter adapts the lab's boot decisions to the DHCP server.
type dhcpBooter struct{ lab *lab.Lab }

func (b dhcpBooter) Boot(ctx context.Context, c dhcp.Client) (dhcp.Boot, error) {
	a := b.lab.DHCP(ctx, lab.DHCPClient{
		MAC: c.MAC, Firmware: c.Firmware.String(), Arch: fmt.Sprint(c.Arch), VendorClass: c.VendorClass,
	})
	return dhcp.Boot{IP: a.IP, Hostname: a.Hostname, BootFile: a.BootFile}, nil
}

// leaseStore keeps the DHCP server's leases in the lab's store.
type leaseStore struct{ s lab.Store }

func (l leaseStore) LoadLeases(ctx context.Context) ([]dhcp.Lease, error) {
	all, err := l.s.Leases(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]dhcp.Lease, len(all))
	for i, x := range all {
		out[i] = dhcp.Lease{MAC: x.MAC, IP: x.IP, Expiry: x.Expiry, Hostname: x.Hostname}
	}
	return out, nil
}

func (l leaseStore) UpdateLeases(ctx context.Context, changes []dhcp.LeaseChange) error {
	out := make([]lab.LeaseChange, len(changes))
	for i, c := range changes {
		x := c.Lease
		out[i] = lab.LeaseChange{Lease: lab.Lease{MAC: x.MAC, IP: x.IP, Expiry: x.Expiry, Hostname: x.Hostname}, Delete: c.Delete}
	}
	return l.s.UpdateLeases(ctx, out)
}

// address is the appliance's address as boards reach it: the configured
// one, or the first IPv4 address of the first DHCP interface.
func (a *appliance) address() netip.Addr {
	if a.cfg.Address.IsValid() {
		return a.cfg.Address
	}
	for _, name := range a.cfg.DHCP.Interfaces {
		if ip, _, err := interfaceIPv4(name); err == nil {
			return ip
		}
	}
	return netip.Addr{}
}

// interfaceIPv4 returns an interface's first IPv4 address and its prefix.
func interfaceIPv4(name string) (netip.Addr, netip.Prefix, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap().Is4() {
				ones, _ := ipn.Mask.Size()
				return ip.Unmap(), netip.PrefixFrom(ip.Unmap(), ones).Masked(), nil
			}
		}
	}
	return netip.Addr{}, netip.Prefix{}, fmt.Errorf("interface %s has no IPv4 address", name)
}

func listenPort(addr string) uint16 {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	var n uint16
	fmt.Sscan(p, &n)
	return n
}

// imageSource resolves the lab's image names: the configuration's images
// first (one version each), then the catalog's (the active version for a
// new boot, the recorded one for a running boot).
type imageSource struct {
	static  lab.StaticImages
	catalog *images.Catalog

	mu   sync.Mutex
	open map[string]*cow.Image // catalog versions' roots by path, opened once
}

func (s *imageSource) Current(name string) (lab.ImageVersion, error) {
	if _, ok := s.static[name]; ok {
		return s.static.Get(name)
	}
	v, err := s.catalog.Active(name)
	if err != nil {
		return lab.ImageVersion{}, err
	}
	return s.version(v)
}

func (s *imageSource) Get(ref string) (lab.ImageVersion, error) {
	if _, ok := s.static[ref]; ok {
		return s.static.Get(ref)
	}
	name, version, err := images.ParseRef(ref)
	if err != nil {
		return lab.ImageVersion{}, err
	}
	v, err := s.catalog.Get(name, version)
	if err != nil {
		return lab.ImageVersion{}, err
	}
	return s.version(v)
}

// version opens a catalog version's root (once) and maps its boot files
// to the paths the lab serves them under.
func (s *imageSource) version(v images.Version) (lab.ImageVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	img := s.open[v.RootPath]
	if img == nil {
		var err error
		if img, err = cow.OpenImage(v.RootPath); err != nil {
			return lab.ImageVersion{}, err
		}
		if s.open == nil {
			s.open = make(map[string]*cow.Image)
		}
		s.open[v.RootPath] = img
	}
	out := lab.ImageVersion{Ref: v.String(), Base: img, Kernels: make(map[lab.Arch]lab.KernelFiles)}
	for arch, f := range v.Kernels {
		k, err1 := filepath.Rel(s.catalog.Dir(), f.Kernel)
		i, err2 := filepath.Rel(s.catalog.Dir(), f.Initrd)
		if err1 != nil || err2 != nil {
			return lab.ImageVersion{}, fmt.Errorf("image %s: boot files outside the catalog", v)
		}
		out.Kernels[lab.Arch(arch)] = lab.KernelFiles{Kernel: "images/" + filepath.ToSlash(k), Initrd: "images/" + filepath.ToSlash(i)}
	}
	return out, nil
}

// labResolver serves NBD for the lab: a boot's token opens its board's
// session, from the board's address only; an image name opens the image
// read-only (the masters are the same for everyone and never written).
type labResolver struct {
	lab    *lab.Lab
	images map[string]*cow.Image
}

func (r labResolver) Open(ctx context.Context, name string, peer netip.AddrPort) (*nbd.Export, error) {
	if img, ok := r.images[name]; ok && !strings.Contains(name, "@") {
		return &nbd.Export{Name: name, Description: "image " + name + " (read-only)", Device: img, ReadOnly: true, MultiConn: true}, nil
	}
	s, rec, err := r.lab.OpenSession(ctx, name, peer.Addr())
	if err != nil {
		return nil, err
	}
	return &nbd.Export{
		// The name is the boot's token; the session's name is derived
		// from it one way.
		Name: name, LogName: rec.Session, Description: "root of " + rec.Board, Device: s, MultiConn: true,
		Release: func() { s.Close() },
	}, nil
}

// List shows the images only: boot tokens are capabilities.
func (r labResolver) List(context.Context, netip.AddrPort) ([]nbd.ExportInfo, error) {
	var out []nbd.ExportInfo
	for name := range r.images {
		out = append(out, nbd.ExportInfo{Name: name, Description: "image " + name + " (read-only)"})
	}
	return out, nil
}

// loadConfig reads and checks a configuration file, including that the
// files it names exist.
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if err := cfg.CheckFiles(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// runCheckConfig is `rackboot check-config FILE`.
func runCheckConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("check-config: %w", errUsage)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: rackboot check-config FILE")
		return fmt.Errorf("check-config: want one FILE: %w", errUsage)
	}
	if _, err := loadConfig(fs.Arg(0)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok\n", fs.Arg(0))
	return nil
}

var _ tftp.Deliverer = (*lab.File)(nil)
