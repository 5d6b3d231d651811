// Package vmtest holds the initramfs's QEMU boot tests (build tag
// vmtest): the real kernel and initramfs from scripts/kernel.sh against
// rackboot's NBD server, dnsmasq and a report endpoint in a network
// namespace.
package vmtest
