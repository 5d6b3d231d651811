package dhcp_test

import (
	"context"
	"errors"
	"log"
	"net/netip"

	"github.com/rackboot/rackboot/dhcp"
	"golang.org/x/sync/errgroup"
)

// A full-mode server on a dedicated boot network, with an Advertiser on
// the same interface so that iPXE doesn't wait for IPv6.
func ExampleServer() {
	booter := dhcp.BooterFunc(func(ctx context.Context, c dhcp.Client) (dhcp.Boot, error) {
		switch c.Firmware {
		case dhcp.FirmwareBIOS:
			return dhcp.Boot{BootFile: "undionly.kpxe"}, nil
		case dhcp.FirmwareIPXE:
			return dhcp.Boot{BootFile: "http://10.0.0.1:8080/ipxe/boot.ipxe"}, nil
		case dhcp.FirmwareUBoot:
			return dhcp.Boot{BootFile: "boot.scr.uimg"}, nil
		}
		return dhcp.Boot{}, nil // an address, no boot information
	})
	srv := &dhcp.Server{
		Mode:       dhcp.ModeFull,
		Interface:  "eth1",
		ServerIP:   netip.MustParseAddr("10.0.0.1"),
		Subnet:     netip.MustParsePrefix("10.0.0.0/24"),
		RangeStart: netip.MustParseAddr("10.0.0.100"),
		RangeEnd:   netip.MustParseAddr("10.0.0.199"),
		Booter:     booter,
	}
	ra := &dhcp.Advertiser{Interface: "eth1"}

	ctx := context.Background() // main's signal.NotifyContext
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.ListenAndServe(ctx) })
	g.Go(func() error { return ra.ListenAndServe(ctx) })
	if err := g.Wait(); err != nil {
		var fe *dhcp.ForeignServerError
		if errors.As(err, &fe) {
			log.Printf("not starting: %s already serves DHCP on %s", fe.ServerID, fe.Interface)
		}
		log.Print(err)
	}
}
