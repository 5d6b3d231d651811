package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/rackboot/rackboot/config"
	"github.com/rackboot/rackboot/images"
	"github.com/rackboot/rackboot/lab"
	"github.com/rackboot/rackboot/nbd/cow"
)

const imageUsage = `usage: rackboot image <command> (--state DIR | --config FILE) [flags]

commands:
  import [--name NAME] [--activate] PATH
                          import a recipe output directory (out/images/RECIPE-ARCH)
  import --kernel [ARCH=]FILE --initrd [ARCH=]FILE [--manifest FILE] [--name NAME] [--activate] IMAGE
                          import an image file and its manifest (default: manifest.json beside it)
  list                    versions with their size, sha256, arch, boards and the active one
  activate NAME@VERSION   make the version the one that new boots get
  verify                  recompute every sha256; exit status 1 on any mismatch
  gc                      delete versions neither active nor used by a boot or session

The catalog lives in STATE/images; --config FILE reads state_dir from the
configuration. Run 'rackboot image <command> -h' for a command's flags.
`

// runImage is `rackboot image`: the catalog of master root images.
func runImage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, imageUsage)
		return fmt.Errorf("image: no command given: %w", errUsage)
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "import":
		return imageImport(ctx, args, stdout, stderr)
	case "list":
		return imageList(ctx, args, stdout, stderr)
	case "activate":
		return imageActivate(args, stdout, stderr)
	case "verify":
		return imageVerify(ctx, args, stdout, stderr)
	case "gc":
		return imageGC(ctx, args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, imageUsage)
		return nil
	}
	fmt.Fprint(stderr, imageUsage)
	return fmt.Errorf("image: unknown command %q: %w", cmd, errUsage)
}

// catalogFlags are the flags every image command takes to find the
// state directory.
type catalogFlags struct {
	state, config string
}

func newImageFlags(cmd, synopsis string, stderr io.Writer) (*flag.FlagSet, *catalogFlags) {
	flags := flag.NewFlagSet("image "+cmd, flag.ContinueOnError)
	flags.SetOutput(stderr)
	var cf catalogFlags
	flags.StringVar(&cf.state, "state", "", "the appliance's state directory (the catalog is STATE/images)")
	flags.StringVar(&cf.config, "config", "", "read the state directory from this rackboot configuration")
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: rackboot image "+synopsis)
		flags.PrintDefaults()
	}
	return flags, &cf
}

// stateDir returns the state directory the flags name.
func (cf *catalogFlags) stateDir(cmd string) (string, error) {
	switch {
	case cf.state != "" && cf.config != "":
		return "", fmt.Errorf("image %s: --state and --config are exclusive: %w", cmd, errUsage)
	case cf.state != "":
		return cf.state, nil
	case cf.config != "":
		cfg, err := config.Load(cf.config)
		if err != nil {
			return "", err
		}
		return cfg.StateDir, nil
	}
	return "", fmt.Errorf("image %s: --state DIR or --config FILE is required: %w", cmd, errUsage)
}

func (cf *catalogFlags) open(cmd string) (*images.Catalog, string, error) {
	state, err := cf.stateDir(cmd)
	if err != nil {
		return nil, "", err
	}
	cat, err := images.Open(state)
	return cat, state, err
}

// parseInterspersed parses args into fs, allowing flags after the
// positional arguments ("import PATH --activate"), and returns the
// positional ones.
func parseInterspersed(flags *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := flags.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%s: %w", flags.Name(), errUsage)
		}
		rest := flags.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// archFiles collects repeated --kernel/--initrd [ARCH=]FILE flags; ""
// stands for the manifest's arch.
type archFiles map[string]string

func (a archFiles) String() string { return fmt.Sprint(map[string]string(a)) }

func (a archFiles) Set(v string) error {
	arch, file, ok := strings.Cut(v, "=")
	if !ok || strings.ContainsRune(arch, '/') {
		arch, file = "", v
	}
	if file == "" {
		return fmt.Errorf("want [ARCH=]FILE, got %q", v)
	}
	if _, dup := a[arch]; dup {
		return fmt.Errorf("%q given twice", v)
	}
	a[arch] = file
	return nil
}

func imageImport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags, cf := newImageFlags("import", "import [--name NAME] [--activate] [--kernel [ARCH=]FILE --initrd [ARCH=]FILE] [--manifest FILE] PATH", stderr)
	name := flags.String("name", "", "the image's name in the catalog (default: the manifest's NAME-ARCH)")
	manifest := flags.String("manifest", "", "the image's manifest (default: manifest.json beside the image)")
	activate := flags.Bool("activate", false, "make the imported version active")
	kernels, initrds := archFiles{}, archFiles{}
	flags.Var(kernels, "kernel", "kernel the image boots, for ARCH (default: the manifest's); repeatable")
	flags.Var(initrds, "initrd", "initramfs the image boots, for ARCH (default: the manifest's); repeatable")
	pos, err := parseInterspersed(flags, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		flags.Usage()
		return fmt.Errorf("image import: want one PATH: %w", errUsage)
	}
	cat, _, err := cf.open("import")
	if err != nil {
		return err
	}
	src, err := importSource(pos[0], *manifest, kernels, initrds)
	if err != nil {
		return err
	}
	src.Name = *name
	v, err := cat.Import(ctx, src)
	switch {
	case errors.Is(err, images.ErrExists):
		fmt.Fprintf(stdout, "%s already imported\n", v)
	case err != nil:
		return err
	default:
		fmt.Fprintf(stdout, "imported %s: %s, %s, sha256 %s\n", v, v.Arch, humanBytes(v.Size), v.SHA256)
	}
	if *activate {
		if err := cat.Activate(v.Name, v.Version); err != nil {
			return err
		}
	}
	if a, err := cat.Active(v.Name); err == nil && a.Version == v.Version {
		fmt.Fprintf(stdout, "%s is active\n", v)
	}
	return nil
}

// importSource describes what `image import PATH` imports: a recipe
// output directory, or an image file with its manifest; --kernel and
// --initrd name or override the boot files.
func importSource(path, manifest string, kernels, initrds archFiles) (images.ImportSource, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return images.ImportSource{}, fmt.Errorf("image import: %w", err)
	}
	var src images.ImportSource
	if fi.IsDir() {
		if src, err = images.FromDir(path); err != nil {
			return images.ImportSource{}, err
		}
		if manifest != "" {
			src.Manifest = manifest
		}
	} else {
		if manifest == "" {
			manifest = filepath.Join(filepath.Dir(path), images.RecipeManifest)
		}
		src = images.ImportSource{Image: path, Manifest: manifest, Boot: map[string]images.BootFiles{}}
	}
	if len(kernels)+len(initrds) == 0 {
		return src, nil
	}
	b, err := os.ReadFile(src.Manifest)
	if err != nil {
		return images.ImportSource{}, fmt.Errorf("image import: reading manifest: %w", err)
	}
	m, err := images.ParseManifest(b)
	if err != nil {
		return images.ImportSource{}, fmt.Errorf("%s: %w", src.Manifest, err)
	}
	if src.Boot == nil {
		src.Boot = map[string]images.BootFiles{}
	}
	for _, arch := range slices.Sorted(maps.Keys(kernels)) {
		a := cmp.Or(arch, m.Arch)
		bf := src.Boot[a]
		bf.Kernel = kernels[arch]
		src.Boot[a] = bf
	}
	for _, arch := range slices.Sorted(maps.Keys(initrds)) {
		a := cmp.Or(arch, m.Arch)
		bf := src.Boot[a]
		bf.Initrd = initrds[arch]
		src.Boot[a] = bf
	}
	return src, nil
}

// versionUsers is what uses the versions of the catalog: the current boots
// recorded in STATE/rackboot.db and the session layers in STATE/sessions,
// each by board, keyed by NAME@VERSION.
type versionUsers struct {
	boots    map[string][]string // NAME@VERSION → boards
	sessions []cow.SessionInfo
}

func readUsage(ctx context.Context, state string) (*versionUsers, error) {
	u := &versionUsers{boots: map[string][]string{}}
	db := filepath.Join(state, "rackboot.db")
	if _, err := os.Stat(db); err == nil {
		st, err := lab.OpenSQLite(ctx, db)
		if err != nil {
			return nil, err
		}
		defer st.Close()
		boots, err := st.Boots(ctx, math.MaxInt32)
		if err != nil {
			return nil, fmt.Errorf("reading boots: %w", err)
		}
		for _, b := range boots {
			if b.Ended.IsZero() && strings.Contains(b.Image, "@") {
				u.boots[b.Image] = append(u.boots[b.Image], b.Board)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading boots: %w", err)
	}
	sessions, err := cow.ListSessions(state)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	u.sessions = sessions
	return u, nil
}

// boards returns the boards whose current boot or session uses v.
func (u *versionUsers) boards(v images.Version) []string {
	out := slices.Clone(u.boots[v.String()])
	for _, s := range u.sessions {
		if v.LayeredBy(s) {
			out = append(out, cmp.Or(s.Owner, s.Name))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func imageList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags, cf := newImageFlags("list", "list (--state DIR | --config FILE)", stderr)
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	cat, state, err := cf.open("list")
	if err != nil {
		return err
	}
	imgs, err := cat.List()
	if err != nil {
		return err
	}
	u, err := readUsage(ctx, state)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tVERSION\tACTIVE\tARCH\tSIZE\tSHA256\tIMPORTED\tBOARDS")
	for _, img := range imgs {
		for _, v := range img.Versions {
			active := ""
			if v.Version == img.Active {
				active = "*"
			}
			boards := strings.Join(u.boards(v), ",")
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Version, active, v.Arch, humanBytes(v.Size),
				v.SHA256, v.Imported.Local().Format("2006-01-02 15:04"), cmp.Or(boards, "-"))
		}
	}
	return tw.Flush()
}

func imageActivate(args []string, stdout, stderr io.Writer) error {
	flags, cf := newImageFlags("activate", "activate (--state DIR | --config FILE) NAME@VERSION", stderr)
	pos, err := parseInterspersed(flags, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		flags.Usage()
		return fmt.Errorf("image activate: want one NAME@VERSION: %w", errUsage)
	}
	name, version, err := images.ParseRef(pos[0])
	if err != nil {
		return fmt.Errorf("image activate: %w: %w", err, errUsage)
	}
	cat, _, err := cf.open("activate")
	if err != nil {
		return err
	}
	prev, err := cat.Active(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := cat.Activate(name, version); err != nil {
		return err
	}
	if prev.Version != "" && prev.Version != version {
		fmt.Fprintf(stdout, "%s@%s is active (was %s); boots in progress keep theirs until they reboot\n", name, version, prev.Version)
	} else {
		fmt.Fprintf(stdout, "%s@%s is active\n", name, version)
	}
	return nil
}

func imageVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags, cf := newImageFlags("verify", "verify (--state DIR | --config FILE)", stderr)
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	cat, _, err := cf.open("verify")
	if err != nil {
		return err
	}
	problems, err := cat.Verify(ctx)
	if err != nil {
		return err
	}
	// For the versions that are fine. List fails on a version it can't
	// read, which Verify has reported: then only the problems are printed.
	imgs, _ := cat.List()
	byVersion := map[string][]images.Problem{}
	for _, p := range problems {
		if p.Version == "" {
			fmt.Fprintf(stdout, "FAIL %s\n", p)
			continue
		}
		ref := p.Name + "@" + p.Version
		byVersion[ref] = append(byVersion[ref], p)
	}
	for _, img := range imgs {
		for _, v := range img.Versions {
			if len(byVersion[v.String()]) == 0 {
				fmt.Fprintf(stdout, "ok   %s\n", v)
			}
		}
	}
	for _, ref := range slices.Sorted(maps.Keys(byVersion)) {
		for _, p := range byVersion[ref] {
			fmt.Fprintf(stdout, "FAIL %s\n", p)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("image verify: %d problem(s) in %d version(s)", len(problems), len(byVersion))
	}
	return nil
}

func imageGC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags, cf := newImageFlags("gc", "gc (--state DIR | --config FILE)", stderr)
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	cat, state, err := cf.open("gc")
	if err != nil {
		return err
	}
	// Read the boots once GC holds the catalog lock (at its first
	// question), so that no activation can come between the two: a boot
	// recorded by then is seen, and one that starts later gets the active
	// version, which GC keeps.
	var u *versionUsers
	var uerr error
	deleted, err := cat.GC(ctx, func(v images.Version) bool {
		if u == nil && uerr == nil {
			u, uerr = readUsage(ctx, state)
		}
		return uerr != nil || len(u.boots[v.String()]) > 0
	})
	if uerr != nil {
		return fmt.Errorf("image gc: finding versions in use: %w", uerr)
	}
	for _, v := range deleted {
		fmt.Fprintf(stdout, "deleted %s (%s)\n", v, humanBytes(v.Size))
	}
	if err != nil {
		return err
	}
	if len(deleted) == 0 {
		fmt.Fprintln(stdout, "nothing to delete")
	}
	return nil
}
