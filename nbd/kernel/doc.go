// Package kernel attaches NBD connections to the Linux kernel's NBD driver
// (drivers/block/nbd.c) over its generic netlink family "nbd"
// (include/uapi/linux/nbd-netlink.h), so that /dev/nbdN serves an export
// negotiated in user space.
//
// # Basics
//
// Negotiate the export with [github.com/rackboot/rackboot/nbd.Handshake],
// which leaves the socket in the transmission phase, then call [Connect]
// with the socket and the export's size and flags. The kernel takes its own
// reference to each socket: once Connect returns, the caller may close its
// descriptors, exec another program or switch_root; the device stays
// connected. No thread needs to stay in NBD_DO_IT, unlike the ioctl
// interface.
//
// If the server goes away, the kernel keeps requests queued for
// [Config.DeadConnTimeout]; [Reconfigure] hands it new, already negotiated
// sockets for the same export within that time. A [Monitor] hears the
// driver's dead-link notifications. [Disconnect] detaches the device and
// [Status] lists the devices the driver knows (configured or not: it
// doesn't say whether a socket is alive).
//
// # Caveats
//
// The calls need CAP_SYS_ADMIN and the nbd module loaded (otherwise the
// family does not exist: [ErrNoDriver]). Reconfigure replaces dead sockets
// only: given while the device's sockets are all alive, the socket is
// dropped and the call still succeeds (nbd_genl_reconfigure turns the
// -ENOSPC of nbd_reconnect_socket into 0). The driver accepts block sizes that
// are powers of two from 512 bytes to the page size. Messages are built with
// the native byte order of the host, as netlink requires. The package is
// Linux-only.
package kernel
