// Command benchboot compares rackboot's boot servers (DHCP, TFTP, HTTP)
// with the reference servers Debian ships: dnsmasq and ISC Kea (with and
// without multi-threading) for DHCP, dnsmasq and tftpd-hpa for TFTP, nginx
// for HTTP. It prints a table with rackboot's ratio to the best reference
// on every row, and a second table with each server's CPU time per unit of
// work.
//
// It is run by scripts/bench-boot.sh (make bench-boot), which installs the
// reference servers and builds rackboot first:
//
//	go run ./scripts/benchboot -rackboot /tmp/rackboot [-quick] [-servers LIST] [-rows LIST] [-out FILE]
//
// It needs root and iproute2.
//
// # Network
//
// Every packet stays inside two network namespaces the run creates,
// benchboot-PID-srv and benchboot-PID-cli, joined by a veth pair
// (10.88.0.1/16 on the server side, 10.88.0.2/16 on the client side, MTU
// -mtu). The servers run one at a time in the server namespace, each from
// a fresh directory; the clients run in the client namespace. Both
// namespaces are deleted at the end, also after a failure or SIGINT, and
// namespaces left behind by a benchboot that was killed are deleted at the
// next start.
//
// # Method
//
// DHCP: a load generator in this program sends full DISCOVER, OFFER,
// REQUEST, ACK handshakes from distinct client hardware addresses
// (raw Ethernet frames, broadcast flag set, PXE client options), with 1 or
// -outstanding handshakes in flight, against a server started with an
// empty lease database for each measurement; the rate is the number of
// completed handshakes over the time from the first DISCOVER to the last
// ACK. perfdhcp (Debian kea-admin) is not used: it is driven by a target
// rate rather than a number of outstanding exchanges, and it acts as a
// relay (giaddr set), which is not how boards reach the server.
//
// TFTP: curl (tftp://, --tftp-blksize) fetches a -size file of random data
// at blksize 1468 and 65464, by one client and by -clients clients started
// together (one curl process each). HTTP: a Go client in the client
// namespace fetches the same file, one GET per connection. Throughput is
// bytes over the wall time of the whole batch (MB = 10^6 bytes); a batch
// shorter than a second is repeated until the batches took one. Every
// transfer's length is checked, and each server's content is compared with
// the file's SHA-256 in the first round.
//
// Lease files and server state live under -statedir, by default a tmpfs
// (/dev/shm): dnsmasq fsyncs its lease file after every change, rackboot
// commits to SQLite with synchronous=FULL, Kea's memfile never fsyncs, and
// on a tmpfs none of them pays for the disk. Pass -statedir /var/tmp to
// see those costs.
//
// Servers are measured in rounds (-count), one at a time in column order
// each round, and each figure is the median over the rounds. On a shared
// machine the figures are noisy: publish -count 3 or more.
package main

import "github.com/rackboot/rackboot/scripts/internal/benchkit"

func main() { benchkit.Main("benchboot", "interrupted", run) }
