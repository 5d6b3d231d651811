// Package kmod loads the kernel modules packed in the initramfs, with
// u-root's kmodule (modules.dep under /lib/modules/$(uname -r);
// .ko, .ko.xz and .ko.zst): those the hardware needs ([LoadHardware], from
// modules.alias and the devices' modaliases, as udev and modprobe match
// them), or all of them ([Load]).
package kmod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// Result says what Load did.
type Result struct {
	Loaded []string
	// Failed maps module names to why they didn't load. Drivers for
	// hardware that isn't there load fine; these are real failures (a
	// CPU without the instructions crc32c-intel needs, for example).
	Failed map[string]error
	// Took is each requested module's load time, dependencies included.
	Took map[string]time.Duration
}

// Release is the running kernel's release (uname -r).
func Release() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// Packed lists the modules in root/lib/modules/RELEASE/modules.dep by
// name ("virtio_net", "crc32c-intel"), sorted.
func Packed(root, release string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(root, "lib/modules", release, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	var names []string
	for line := range strings.SplitSeq(string(b), "\n") {
		path, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		names = append(names, ModuleName(path))
	}
	slices.Sort(names)
	return names, nil
}

// ModuleName is the module name of a modules.dep path.
func ModuleName(path string) string {
	n := filepath.Base(path)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		n = strings.TrimSuffix(n, ext)
	}
	return strings.TrimSuffix(n, ".ko")
}

// Load loads names and their dependencies, concurrently. It fails only if
// a module in required (names as in modules.dep or with _ for -) did not
// load.
func Load(names, required []string) (Result, error) {
	p, err := kmodule.NewProber(kmodule.ProbeOpts{})
	if err != nil {
		return Result{}, fmt.Errorf("reading module dependencies: %w", err)
	}
	res := Result{Failed: map[string]error{}, Took: map[string]time.Duration{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() {
			start := time.Now()
			err := p.Probe(n, "")
			mu.Lock()
			defer mu.Unlock()
			res.Took[n] = time.Since(start)
			if err != nil {
				res.Failed[n] = err
				return
			}
			res.Loaded = append(res.Loaded, n)
		})
	}
	wg.Wait()
	slices.Sort(res.Loaded)
	return res, checkRequired(res, required)
}

// checkRequired fails for each module in required that isn't in the
// kernel.
func checkRequired(res Result, required []string) error {
	var errs []error
	for _, r := range required {
		if !loaded(r) {
			err := res.Failed[r]
			if err == nil {
				err = errors.New("not packed")
			}
			errs = append(errs, fmt.Errorf("module %s: %w", r, err))
		}
	}
	return errors.Join(errs...)
}

// HardwareOptions tune LoadHardware.
type HardwareOptions struct {
	// Always are loaded whatever the hardware: module names, or aliases
	// such as "crc32c" for every packed module that provides it.
	Always []string
	// Required must end up in the kernel, or LoadHardware fails.
	Required []string
	// Params are module parameters by module name ("nbd": "nbds_max=1").
	Params map[string]string
	// Workers is how many modules load at once; zero means one per CPU.
	// On a single CPU loading one at a time is faster than contending.
	Workers int
}

// LoadHardware loads what the machine needs rather than every packed
// module: the modules whose aliases match a device's modalias under sys,
// then o.Always. Drivers bring up new devices as they load (virtio devices
// behind virtio_pci, disks behind a SATA or USB host), so the devices are
// scanned again after each module and new matches go to the front of the
// queue: the network driver is in before the filesystems are. Modules
// already in the kernel are skipped, so calling it again later loads what
// devices that appeared since need. It fails like Load when a module in
// o.Required is missing.
func LoadHardware(aliases *Aliases, packed []string, sys string, o HardwareOptions) (Result, error) {
	p, err := kmodule.NewProber(kmodule.ProbeOpts{})
	if err != nil {
		return Result{}, fmt.Errorf("reading module dependencies: %w", err)
	}
	isPacked := map[string]bool{}
	for _, n := range packed {
		isPacked[norm(n)] = true
	}
	res := Result{Failed: map[string]error{}, Took: map[string]time.Duration{}}
	var (
		mu     sync.Mutex
		cond   = sync.NewCond(&mu)
		queue  []string
		tried  = map[string]bool{}
		active int
	)
	// scan queues the modules new devices match, ahead of the rest; mu held.
	var seen devices
	scan := func() {
		modaliases, err := seen.scan(sys)
		if err != nil {
			return
		}
		var found []string
		for _, m := range modaliases {
			for _, mod := range aliases.Match(m) {
				if k := norm(mod); isPacked[k] && !tried[k] {
					tried[k] = true
					if !loaded(k) {
						found = append(found, mod)
					}
				}
			}
		}
		queue = append(found, queue...)
	}
	mu.Lock()
	scan()
	for _, n := range o.Always {
		names := []string{n}
		if !isPacked[norm(n)] && !loaded(n) {
			names = aliases.Match(n)
		}
		for _, m := range names {
			if k := norm(m); !tried[k] {
				tried[k] = true
				queue = append(queue, m)
			}
		}
	}
	mu.Unlock()

	workers := o.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			mu.Lock()
			defer mu.Unlock()
			for {
				for len(queue) == 0 && active > 0 {
					cond.Wait()
				}
				if len(queue) == 0 {
					cond.Broadcast()
					return
				}
				n := queue[0]
				queue = queue[1:]
				active++
				mu.Unlock()
				start := time.Now()
				err := p.Probe(n, o.Params[norm(n)])
				took := time.Since(start)
				mu.Lock()
				active--
				res.Took[n] = took
				if err != nil {
					res.Failed[n] = err
				} else {
					res.Loaded = append(res.Loaded, n)
				}
				scan()
				cond.Broadcast()
			}
		})
	}
	wg.Wait()
	slices.Sort(res.Loaded)
	return res, checkRequired(res, o.Required)
}

// norm is a module name with - as _, as the kernel names modules.
func norm(name string) string { return strings.ReplaceAll(name, "-", "_") }

// loaded reports whether module name is in the kernel (loaded or built in).
func loaded(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/module", strings.ReplaceAll(name, "-", "_")))
	return err == nil
}
