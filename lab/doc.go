// Package lab is the one owner of board state: the inventory of boards,
// their boots and boot tokens, which copy-on-write session each boot owns,
// the leases, and the machines waiting for enrollment. It decides who may
// fetch what: a boot config, an NBD session or a report endpoint is only
// handed to the address the board's MAC holds.
//
// # Boots
//
// A boot of a known board starts when its firmware has received its boot
// config (pxelinux.cfg/..., or the iPXE script; see [File.Delivered]): a
// forged request from another machine's address starts nothing. Each boot
// gets a fresh 128-bit token that names its NBD export and authenticates
// its reports; starting a boot discards the board's previous write layer,
// so nothing written in one boot survives into the next.
//
// # Protocols
//
// The package imports no protocol package: cmd/rackboot adapts the DHCP,
// TFTP, HTTP and NBD servers' small interfaces to the Lab's methods.
//
// # State
//
// Boards, leases, boots and their timelines live in a [Store]: SQLite in
// the state directory ([OpenSQLite]), with versioned migrations.
package lab
