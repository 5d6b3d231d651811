// Package agent is rackboot-agent, the daemon that runs on a board once it
// has booted into its NBD root: it tells the appliance the board is ready,
// sends a heartbeat with the board's identity and capabilities, and keeps
// the NBD root connected when the appliance restarts.
//
// # Identity
//
// The initramfs writes /etc/rackboot/boot.json (package
// [github.com/rackboot/rackboot/initramfs/identity]) before switch_root:
// board, MAC, boot token, NBD server address, export, device index and
// size, appliance URL. The agent reads it once, at start.
//
// # Reports
//
// Steps go to the appliance's POST /api/v1/report with the boot token
// ([github.com/rackboot/rackboot/initramfs/report.Client]): "heartbeat"
// every [Agent.Heartbeat] from the start, with a JSON detail ([Facts]);
// "ready" once the build disk is mounted (at once without one); and
// "nbd_reconnect", with the time the root's connection was down, each time
// the [Keeper] restores it. Ready and reconnect reports are retried until
// delivered or refused (a 401/403: another boot of the board is current);
// a heartbeat that fails is dropped for the next.
//
// # The root's connection
//
// The root is /dev/nbdN, attached by the initramfs through the kernel's
// netlink interface (package nbdroot) with a dead-connection timeout of
// two minutes: when its socket dies, the driver holds the root's I/O that
// long, waiting for NBD_CMD_RECONFIGURE with a new socket
// (drivers/block/nbd.c: nbd_handle_cmd waits in wait_for_reconnect). A
// [Keeper] provides it: it hears of the dead link from the driver's
// multicast notification (NBD_CMD_LINK_DEAD, [kernel.Monitor]) and, as a
// fallback, polls /proc/net/tcp for the root's established connection;
// then it dials the server with a backoff capped at [DefaultMaxBackoff],
// negotiates the same export (same size) and hands the socket over. The
// driver silently drops a socket given while its own is alive, so the
// Keeper checks in the TCP table that the kernel kept it.
//
// New requests go out as soon as the socket is replaced. Requests that
// were in flight on the dead socket are resent when the block layer's
// timer next fires for them (nbdroot.DefaultRequeueInterval, 5 s): the
// root stalls for the appliance's downtime, rounded up to that interval
// when a request was in flight.
//
// # Caveats
//
// While the root's connection is down, anything that touches the root
// blocks, so the agent must not: [Main] locks the agent's own pages in
// memory (its executable is on the root), boot.json and the time zone are
// read at start, names are resolved at start, and logs go through a
// buffer that drops lines rather than block on a stalled journal.
package agent
