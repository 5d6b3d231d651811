// Command rackboot is the rack netboot appliance: DHCP, TFTP/HTTP boot
// serving and copy-on-write NBD roots for development boards.
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
		fmt.Fprintln(os.Stderr, "rackboot:", err)
		os.Exit(exitCode(err))
	}
}
