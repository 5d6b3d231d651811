#!/usr/bin/env bash
# bench-e2e.sh [benche2e flags]: boot one QEMU x86 board from rackboot and
# from a stand-in stack (dnsmasq DHCP+TFTP, PXELINUX, nbd-server, a busybox
# initramfs with nbd-client), several times each, and print power-on to
# root mounted for both and the ratio (see scripts/benche2e).
# Needs root: everything runs in network namespaces the benchmark creates.
# Installs the Debian packages it needs if they are missing and runs
# `make rack` if its artifacts are missing.
# N=5 adds -n 5 (boots per path, default 3); REPORT=FILE adds -out FILE (the
# results as Markdown, for the README).
#
# busybox-static is not installed: it conflicts with Debian's busybox,
# which the tests use. The stand-in takes the static busybox that
# scripts/kernel.sh unpacks from the pinned busybox-static package into
# out/cache/amd64/busybox (part of `make rack`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/apt-ensure.sh dnsmasq-base nbd-server nbd-client qemu-system-x86 ipxe-qemu pxelinux syslinux-common cpio curl iproute2

for f in bin/rackboot out/boot/pxelinux.0 out/boot/ldlinux.c32 out/boot/amd64/vmlinuz \
	out/boot/amd64/initramfs.cpio.gz out/images/minimal-amd64/root.img out/cache/amd64/busybox/bin/busybox; do
	if [ ! -e "$f" ]; then
		echo "bench-e2e: $f missing; running make rack" >&2
		make rack
		break
	fi
done
# The pinned kernel's modules, unpacked by scripts/kernel.sh (make initramfs).
compgen -G 'out/cache/amd64/kernel/lib/modules/*/modules.dep' >/dev/null || make initramfs

flags=()
[[ -n "${N:-}" ]] && flags+=(-n "$N")
[[ -n "${REPORT:-}" ]] && flags+=(-out "$REPORT")
exec go run ./scripts/benche2e "${flags[@]}" "$@"
