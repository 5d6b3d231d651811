package lab

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"strings"
)

// KernelNeighbors looks addresses up in the kernel's IPv4 neighbour (ARP)
// table, /proc/net/arp: in proxyDHCP mode the site's DHCP server owns the
// leases, but a board that just talked to us from the boot network is in
// the table.
func KernelNeighbors() Neighbors {
	return NeighborsFunc(func(ip netip.Addr) (net.HardwareAddr, bool) {
		f, err := os.Open("/proc/net/arp")
		if err != nil {
			return nil, false
		}
		defer f.Close()
		return arpLookup(bufio.NewScanner(f), ip)
	})
}

// arpLookup finds ip in /proc/net/arp's format:
//
//	IP address       HW type     Flags       HW address            Mask     Device
//	10.0.0.11        0x1         0x2         52:54:00:00:01:01     *        br0
//
// Only complete entries (flag 0x2) count.
func arpLookup(sc *bufio.Scanner, ip netip.Addr) (net.HardwareAddr, bool) {
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[0] != ip.String() || f[2] == "0x0" {
			continue
		}
		if mac, err := net.ParseMAC(f[3]); err == nil {
			return mac, true
		}
	}
	return nil, false
}

// ChainNeighbors asks each source in turn.
func ChainNeighbors(sources ...Neighbors) Neighbors {
	return NeighborsFunc(func(ip netip.Addr) (net.HardwareAddr, bool) {
		for _, s := range sources {
			if s == nil {
				continue
			}
			if mac, ok := s.MACFor(ip); ok {
				return mac, true
			}
		}
		return nil, false
	})
}
