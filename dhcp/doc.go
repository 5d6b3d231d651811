// Package dhcp implements the DHCPv4 server rackboot's boards netboot
// from, in full or proxy mode, and a router advertiser that spares iPXE
// its IPv6 autoconfiguration timeout.
//
// # Policy
//
// The package knows nothing about boards. For every client that asks, the
// [Server] calls a [Booter] with a [Client] (MAC, firmware classified from
// options 60, 77, 93 and 175, architecture, UUID) and gets a [Boot]: stay
// silent, a reserved address or none, a hostname, a boot file and next
// server, PXELINUX options. Full-mode leases live in memory and are
// persisted through a [LeaseStore]; [Server.LeaseFor] and [Server.MACFor]
// map between MACs and current leases.
//
// # Full mode
//
// [ModeFull] is an authoritative DHCP server (RFC 2131, options from RFC
// 2132) for one subnet on one interface: DHCPDISCOVER gets a DHCPOFFER of
// the client's reservation, else its previous address, else the address
// it asks for, else a free one from the dynamic range; DHCPREQUEST in the
// SELECTING, INIT-REBOOT, RENEWING and REBINDING states gets a DHCPACK or
// a DHCPNAK (section 4.3.2); DHCPRELEASE and DHCPDECLINE free or withhold
// the address; DHCPINFORM gets configuration without a lease (section
// 4.3.5). Replies follow section 4.1: to the relay (giaddr), NAKs
// broadcast, to ciaddr, broadcast when the client sets the broadcast flag,
// else unicast to yiaddr at layer 2 through a packet socket (or broadcast
// when none can be opened). Replies carry the subnet mask, broadcast
// address, router, DNS servers, log server (option 7, our address),
// hostname, lease times, server identifier and boot information (siaddr,
// file, options 66, 67, 209, 210 of RFC 5071). Replies to iPXE carry option
// 175 with sub-option 176 (DHCP_EB_NO_PXEDHCP) set, so that iPXE doesn't
// wait 2-3 s for proxyDHCP offers. Leases are keyed by the client hardware
// address; option 61 is ignored. BOOTP (no option 53) is not served.
//
// Because a second authoritative server would fight with the site's,
// [Server.ListenAndServe] first [Server.Probe]s the interface and refuses
// to start, with a [*ForeignServerError] naming the other server, if any
// other server answers.
//
// # Proxy mode
//
// [ModeProxy] is proxyDHCP (Intel's Preboot Execution Environment
// specification 2.1, section 2.2): the network's own server hands out
// addresses; this one answers only DHCPDISCOVERs from PXE clients (option
// 60 "PXEClient...", RFC 4578) with an offer that has no yiaddr but option
// 60 "PXEClient", the boot file and next server, the client's option 97,
// and for BIOS PXE and iPXE option 43 with PXE_DISCOVERY_CONTROL 8 (skip
// boot server discovery). UEFI PXE then asks the PXE boot server on port
// 4011 ([Server.ServePXE]), which answers with a DHCPACK carrying the same.
// iPXE accepts the offer directly (it has siaddr and a file).
//
// # Router advertisements
//
// iPXE configures IPv6 in parallel with DHCP and waits up to ~13 s for a
// router advertisement. [Advertiser] answers its router solicitations
// (RFC 4861) with an advertisement that configures nothing, which ends
// that wait. Run one next to each full-mode server.
//
// # Concurrency and sockets
//
// A Server reads its sockets itself (not with insomniacslk's server4,
// which spawns a goroutine per packet): one worker at a time reads a
// socket and answers what it read itself, handing the socket to a spare
// worker first only when more packets wait or its answer stalls; at most
// MaxInFlight packets handled at once, every handling bounded by
// HandleTimeout and every write by WriteTimeout. ListenAndServe opens all
// its sockets in the calling goroutine before serving, so tests can run
// it on an OS thread that has entered a network namespace. Binding to
// ports 67 and 4011 and the packet sockets need CAP_NET_BIND_SERVICE and
// CAP_NET_RAW.
package dhcp
