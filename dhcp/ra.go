package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// Defaults for the zero values of Advertiser's fields.
const (
	// DefaultInitialAdvertisements is how many unsolicited router
	// advertisements an Advertiser sends when it starts (RFC 4861
	// MAX_INITIAL_RTR_ADVERTISEMENTS).
	DefaultInitialAdvertisements = 3
	// DefaultMinRAInterval is the minimum time between multicast router
	// advertisements (RFC 4861 MIN_DELAY_BETWEEN_RAS). Solicitations from
	// a link-local address are answered by unicast at once.
	DefaultMinRAInterval = 3 * time.Second
)

var (
	allNodes   = netip.MustParseAddr("ff02::1")
	allRouters = netip.MustParseAddr("ff02::2")
)

// Advertiser sends IPv6 router advertisements (RFC 4861 section 4.2) that
// say there is nothing to configure: router lifetime 0 (not a default
// router), no prefix information, the Managed and Other flags clear (no
// DHCPv6). Its purpose is speed: iPXE runs IPv6 autoconfiguration
// alongside DHCP and, with no router on the link, waits for it to time out
// (~13 s in Debian's ROM) before booting. Any router advertisement that
// answers its solicitation ends that wait (src/net/ndp.c,
// ipv6conf_rx_router_advertisement). Operating systems that receive it
// configure nothing from it.
//
// An Advertiser answers router solicitations arriving on Interface:
// by unicast to the solicitor when it has a link-local source, else by
// multicast to all nodes, at most one multicast per MinInterval. It also
// sends Initial unsolicited advertisements at start. Run one on each
// full-mode boot network; on a proxy-mode network only if it has no IPv6
// router of its own (hosts would see a second router: harmless, since
// lifetime 0 makes it no default router, but confusing, and iPXE would
// take whichever advertisement came first).
type Advertiser struct {
	// Interface is the interface to advertise on. Required.
	Interface string
	// Initial is the number of unsolicited advertisements at start, sent
	// MinInterval apart; 0 means DefaultInitialAdvertisements, negative
	// none.
	Initial int
	// MinInterval is the minimum time between multicast advertisements;
	// 0 means DefaultMinRAInterval.
	MinInterval time.Duration
	// WriteTimeout bounds the sending of one advertisement; 0 means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// Logger receives the advertiser's logs; nil discards them.
	Logger *slog.Logger
}

func (a *Advertiser) logger() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger
}

// ListenAndServe opens a raw ICMPv6 socket bound to Interface and calls
// Serve. It opens the socket in the calling goroutine.
func (a *Advertiser) ListenAndServe(ctx context.Context) error {
	if a.Interface == "" {
		return errors.New("dhcp: Advertiser.Interface is empty")
	}
	lc := net.ListenConfig{Control: bindToDevice(a.Interface)}
	conn, err := lc.ListenPacket(ctx, "ip6:ipv6-icmp", "::")
	if err != nil {
		return fmt.Errorf("dhcp: opening ICMPv6 socket on %s: %w", a.Interface, err)
	}
	return a.Serve(ctx, conn)
}

// Serve advertises on conn, which must be a raw ICMPv6 socket (network
// "ip6:ipv6-icmp"), until ctx is done; then it closes conn and returns
// nil. It looks Interface up and joins the all-routers group in the
// calling goroutine. Failures to send are logged, not returned: at boot
// the interface's link-local address may still be tentative.
func (a *Advertiser) Serve(ctx context.Context, conn net.PacketConn) error {
	defer conn.Close()
	ifi, err := net.InterfaceByName(a.Interface)
	if err != nil {
		return fmt.Errorf("dhcp: %w", err)
	}
	p := ipv6.NewPacketConn(conn)
	var filter ipv6.ICMPFilter
	filter.SetAll(true)
	filter.Accept(ipv6.ICMPTypeRouterSolicitation)
	if err := errors.Join(
		p.SetICMPFilter(&filter),
		p.SetHopLimit(255),
		p.SetMulticastHopLimit(255),
		p.SetMulticastLoopback(false),
		p.SetMulticastInterface(ifi),
		p.JoinGroup(ifi, &net.IPAddr{IP: allRouters.AsSlice()}),
		p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagInterface, true),
	); err != nil {
		return fmt.Errorf("dhcp: setting up ICMPv6 socket on %s: %w", ifi.Name, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	log := a.logger().With("interface", ifi.Name)
	ra := routerAdvertisement(ifi.HardwareAddr)
	minGap := orDefault(a.MinInterval, DefaultMinRAInterval)
	writeTimeout := orDefault(a.WriteTimeout, DefaultWriteTimeout)
	send := func(dst netip.Addr) {
		if err := conn.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
			return
		}
		// No zone: the control message names the interface by index,
		// which (unlike a zone name) needs no lookup at send time.
		to := &net.IPAddr{IP: dst.AsSlice()}
		cm := &ipv6.ControlMessage{HopLimit: 255, IfIndex: ifi.Index}
		if _, err := p.WriteTo(ra, cm, to); err != nil {
			if ctx.Err() == nil {
				log.Warn("sending router advertisement failed", "peer", dst.String(), "err", err)
			}
			return
		}
		log.Debug("sent router advertisement", "peer", dst.String())
	}

	initial := a.Initial
	if initial == 0 {
		initial = DefaultInitialAdvertisements
	}
	var lastMulticast time.Time
	var pending time.Time // when a delayed multicast advertisement is due; zero: none
	if initial > 0 {
		pending = time.Now()
	}
	buf := make([]byte, 1500)
	for {
		if !pending.IsZero() && !time.Now().Before(pending) {
			send(allNodes)
			lastMulticast, pending = time.Now(), time.Time{}
			if initial--; initial > 0 {
				pending = lastMulticast.Add(minGap)
			}
		}
		if err := conn.SetReadDeadline(pending); err != nil { // zero: no deadline
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dhcp: %w", err)
		}
		n, cm, from, err := p.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return fmt.Errorf("dhcp: reading ICMPv6 on %s: %w", ifi.Name, err)
		}
		src, ok := solicitation(buf[:n], cm, from, ifi.Index)
		if !ok {
			continue
		}
		if src.IsLinkLocalUnicast() {
			send(src)
			continue
		}
		// From the unspecified address: multicast, rate limited.
		if pending.IsZero() {
			pending = lastMulticast.Add(minGap)
			if now := time.Now(); pending.Before(now) {
				pending = now
			}
		}
	}
}

// solicitation validates a router solicitation (RFC 4861 section 6.1.1)
// and returns its source address.
func solicitation(b []byte, cm *ipv6.ControlMessage, from net.Addr, ifindex int) (netip.Addr, bool) {
	if cm == nil || cm.HopLimit != 255 || (cm.IfIndex != 0 && cm.IfIndex != ifindex) {
		return netip.Addr{}, false
	}
	if len(b) < 8 || ipv6.ICMPType(b[0]) != ipv6.ICMPTypeRouterSolicitation || b[1] != 0 {
		return netip.Addr{}, false
	}
	ia, ok := from.(*net.IPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	src, ok := netip.AddrFromSlice(ia.IP)
	return src, ok
}

// routerAdvertisement builds the advertisement: cur hop limit 0
// (unspecified), M and O clear, router lifetime 0, reachable time and
// retransmission timer 0 (unspecified), and the source link-layer address
// option. The kernel fills in the ICMPv6 checksum.
func routerAdvertisement(mac net.HardwareAddr) []byte {
	body := make([]byte, 12)
	if len(mac) == 6 {
		body = append(body, 1, 1) // source link-layer address, 1 unit of 8 bytes
		body = append(body, mac...)
	}
	m := icmp.Message{Type: ipv6.ICMPTypeRouterAdvertisement, Code: 0, Body: &icmp.RawBody{Data: body}}
	b, _ := m.Marshal(nil) // can't fail for a RawBody
	return b
}
