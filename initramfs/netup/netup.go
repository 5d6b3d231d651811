// Package netup brings up the boot interface with DHCPv4: the interface
// whose MAC the boot loader named (BOOTIF=), or else the first with
// carrier. The DHCP requests carry vendor class (option 60)
// [VendorClass], so the appliance can tell the initramfs from the
// firmware and from the booted OS.
package netup

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
)

// VendorClass is the DHCP vendor class identifier the initramfs sends.
const VendorClass = "rackboot-initramfs"

// Defaults for Options' zero fields.
const (
	DefaultLinkTimeout = 10 * time.Second
	DefaultDHCPTimeout = 2 * time.Second
	DefaultDHCPRetries = 5
)

// Options says which interface to use and how long to try.
type Options struct {
	// MAC selects the interface; nil means the first with carrier.
	MAC net.HardwareAddr
	// LinkTimeout bounds the wait for the interface to appear and for
	// carrier; zero means DefaultLinkTimeout.
	LinkTimeout time.Duration
	// DHCPTimeout is the wait for each DHCP answer, DHCPRetries the
	// number of retries; zero means the defaults.
	DHCPTimeout time.Duration
	DHCPRetries int
	// Printf receives progress lines; nil discards them.
	Printf func(format string, args ...any)
}

// Lease is the configured interface.
type Lease struct {
	Interface string
	MAC       net.HardwareAddr
	Addr      netip.Prefix
	Router    netip.Addr
	Server    netip.Addr // the DHCP server
}

// Up chooses the interface, runs DHCP on it and configures the address,
// routes and /etc/resolv.conf from the answer.
func Up(ctx context.Context, o Options) (Lease, error) {
	if o.LinkTimeout <= 0 {
		o.LinkTimeout = DefaultLinkTimeout
	}
	if o.DHCPTimeout <= 0 {
		o.DHCPTimeout = DefaultDHCPTimeout
	}
	if o.DHCPRetries <= 0 {
		o.DHCPRetries = DefaultDHCPRetries
	}
	if o.Printf == nil {
		o.Printf = func(string, ...any) {}
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	link, err := choose(ctx, o)
	if err != nil {
		return Lease{}, err
	}
	name := link.Attrs().Name
	o.Printf("interface %s (%s)", name, link.Attrs().HardwareAddr)
	// DHCP goes out as soon as the link has carrier: u-root's dhclient
	// waits for the operational state to say "up", which the kernel's
	// link watcher updates up to a second later (it batches non-urgent
	// events), while the device transmits from the moment it is up with
	// carrier.
	client, err := nclient4.New(name, nclient4.WithTimeout(o.DHCPTimeout), nclient4.WithRetry(o.DHCPRetries))
	if err != nil {
		return Lease{}, fmt.Errorf("DHCP on %s: %w", name, err)
	}
	defer client.Close()
	dl, err := client.Request(ctx,
		dhcpv4.WithNetboot,
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(VendorClass)),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionHostName),
	)
	if err != nil {
		return Lease{}, fmt.Errorf("DHCP on %s: %w", name, err)
	}
	lease := dhclient.NewPacket4(link, dl.ACK)
	if err := lease.Configure(); err != nil {
		return Lease{}, fmt.Errorf("configuring %s: %w", name, err)
	}
	ack, _ := lease.Message()
	l := Lease{Interface: name, MAC: link.Attrs().HardwareAddr}
	if ack != nil {
		ones, _ := ack.SubnetMask().Size()
		if a, ok := netip.AddrFromSlice(ack.YourIPAddr.To4()); ok {
			l.Addr = netip.PrefixFrom(a, ones)
		}
		if rs := ack.Router(); len(rs) > 0 {
			l.Router, _ = netip.AddrFromSlice(rs[0].To4())
		}
		l.Server, _ = netip.AddrFromSlice(ack.ServerIdentifier().To4())
	}
	return l, nil
}

// choose finds the boot interface, waiting for drivers to create it and
// for carrier.
func choose(ctx context.Context, o Options) (netlink.Link, error) {
	ctx, cancel := context.WithTimeout(ctx, o.LinkTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	seen := map[string]bool{}
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("listing interfaces: %w", err)
		}
		links = ethernet(links)
		for _, l := range links {
			if o.MAC != nil && !bytes.Equal(l.Attrs().HardwareAddr, o.MAC) {
				continue
			}
			if !seen[l.Attrs().Name] {
				seen[l.Attrs().Name] = true
				netlink.LinkSetUp(l) // carrier is only known once up
			}
			if carrier(l.Attrs().Name) {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			var names []string
			for _, l := range links {
				names = append(names, fmt.Sprintf("%s (%s)", l.Attrs().Name, l.Attrs().HardwareAddr))
			}
			if o.MAC != nil {
				return nil, fmt.Errorf("no interface with MAC %s and carrier among %s", o.MAC, list(names))
			}
			return nil, fmt.Errorf("no interface with carrier among %s", list(names))
		case <-tick.C:
		}
	}
}

func list(names []string) string {
	if len(names) == 0 {
		return "none (no network driver bound?)"
	}
	return strings.Join(names, ", ")
}

// ethernet keeps the Ethernet devices, sorted by name.
func ethernet(links []netlink.Link) []netlink.Link {
	var out []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.EncapType != "ether" || len(a.HardwareAddr) != 6 || l.Type() != "device" {
			continue
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b netlink.Link) int { return strings.Compare(a.Attrs().Name, b.Attrs().Name) })
	return out
}

func carrier(name string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", name, "carrier"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
