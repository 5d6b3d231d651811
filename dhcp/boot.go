package dhcp

import (
	"context"
	"net/netip"
)

// Booter is the boot policy: it decides what a client gets. The server
// calls it for every DISCOVER, REQUEST and INFORM it answers (and every
// PXE boot server request), so it should be quick; its context carries
// the per-packet deadline (Server.HandleTimeout). An error means "don't
// answer": the server logs it and stays silent, and the client retries.
// Implementations must be safe for concurrent use.
type Booter interface {
	Boot(ctx context.Context, c Client) (Boot, error)
}

// BooterFunc adapts a function to the Booter interface.
type BooterFunc func(ctx context.Context, c Client) (Boot, error)

// Boot calls f.
func (f BooterFunc) Boot(ctx context.Context, c Client) (Boot, error) { return f(ctx, c) }

// Boot is what a client gets. The zero Boot means: in full mode, an
// address from the dynamic range and no boot information; in proxy mode,
// no answer (proxyDHCP has nothing to say without a boot file).
type Boot struct {
	// Ignore makes the server stay silent: no offer, no ACK, no NAK.
	Ignore bool
	// IP is a fixed address for this client (a reservation), or the zero
	// Addr for one from the dynamic range. Full mode only. It must lie in
	// Server.Subnet and should lie outside the dynamic range; if another
	// client holds it, the reservation wins when this client's REQUEST is
	// acknowledged and the other client's lease is deleted.
	IP netip.Addr
	// Hostname is sent as option 12 (full mode). Empty: none.
	Hostname string
	// BootFile is the boot file name: the BOOTP "file" field, and option
	// 67 when the client asks for it or the name is longer than the
	// field's 127 bytes. Examples: "lpxelinux.0",
	// "http://10.0.0.1:8080/ipxe/boot.ipxe", "boot.scr.uimg". Empty: no
	// boot information at all. At most 255 bytes.
	BootFile string
	// NextServer is the TFTP server (siaddr, and option 66 when asked
	// for). The zero Addr means the server's own address.
	NextServer netip.Addr
	// PXELinuxConfig is option 209 (RFC 5071), the PXELINUX
	// configuration file, if not empty.
	PXELinuxConfig string
	// PathPrefix is option 210 (RFC 5071), the PXELINUX path prefix, if
	// not empty.
	PathPrefix string
}
