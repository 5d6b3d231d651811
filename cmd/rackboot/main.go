// Command rackboot is the rack netboot appliance: DHCP, TFTP/HTTP boot
// serving and copy-on-write NBD roots for development boards.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
)

// gcPercent is the garbage collector's target when GOGC isn't set. The
// appliance's live heap is a few MB, so at Go's default (100) the
// allocation-heavy paths (SQLite, DHCP packets) start a collection every
// few MB allocated. 400 costs about 12 MB more peak memory and cut the CPU
// per DHCP handshake at 64 in flight by a fifth (make bench-boot, A/B).
const gcPercent = 400

// minProcs is the least GOMAXPROCS rackboot runs with when GOMAXPROCS
// isn't set, as when it may use one CPU only (taskset, a small board).
// An NBD connection waits for its next request in ppoll(2), a system
// call. With one P, the runtime's monitor takes that P from the waiting
// thread once the wait outlasts its tick (20µs at first) and wakes another
// thread to hold it, and the goroutine then resumes on a third; with a
// second P idle, the runtime leaves the waiting thread alone. Pinned to
// one CPU, with fio on another, a random 4 KiB read at queue depth 1 cost
// the server 25-27µs of CPU and 1.1-1.2 context switches, against 30-33µs
// and 1.4-1.6 with one P, at the same IOPS (alternating runs); QD32 and
// sequential reads were unchanged. Go's own default under a cgroup CPU
// limit has the same floor.
const minProcs = 2

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < minProcs {
		runtime.GOMAXPROCS(minProcs)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rackboot:", err)
		os.Exit(exitCode(err))
	}
}
