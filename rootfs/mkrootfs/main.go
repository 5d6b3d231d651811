// Command mkrootfs builds and inspects rackboot master root images
// (package rootfs).
//
//	mkrootfs build -recipe rootfs/recipes/minimal.yaml -arch amd64 [-out out/images] [-cache out/cache/rootfs] [-repo .]
//	mkrootfs inspect out/images/minimal-amd64
//	mkrootfs check rootfs/recipes/*.yaml
//
// build writes OUT/NAME-ARCH/root.img and manifest.json; it needs root.
// inspect checks an image against the master image rules (no machine ID,
// host keys, leases or logs; the placeholder hostname; the agent) without
// mounting it. check validates recipes.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkrootfs:", err)
		os.Exit(1)
	}
}
