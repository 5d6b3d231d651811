// Package kmod loads the kernel modules packed in the initramfs, with
// u-root's kmodule (modules.dep under /lib/modules/$(uname -r);
// .ko, .ko.xz and .ko.zst).
package kmod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	return res, errors.Join(errs...)
}

// loaded reports whether module name is in the kernel (loaded or built in).
func loaded(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/module", strings.ReplaceAll(name, "-", "_")))
	return err == nil
}
