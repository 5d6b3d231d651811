#!/usr/bin/env bash
# kernel.sh ARCH [OUT]: build the board kernel and initramfs for ARCH
# (amd64, arm64 or armhf) into OUT/boot/ARCH (OUT defaults to out):
#
#   vmlinuz              the pinned Debian kernel, as packaged
#   Image                (arm64) the same, uncompressed, for U-Boot booti
#   initramfs.cpio.gz    rackboot's init (initramfs/init), mke2fs with its
#                        libraries (for the build disk), and the kernel
#                        modules the init may need with their modules.dep
#                        and modules.alias (it loads those the hardware
#                        matches);
#                        with DEBUG_SHELL=1 also busybox, for
#                        rackboot.debug=shell (the budget grows by 1.1 MB)
#   MANIFEST             packages, versions and modules used
#
# Debian packages are fetched with apt-get download through a private apt
# state (no dpkg --add-architecture) and cached in OUT/cache. The
# initramfs is reproducible: the same inputs give the same bytes. The base
# archive (everything but the modules) must stay within BUDGET bytes.
set -euo pipefail
export LC_ALL=C

# The pinned kernel: ABI name and Debian version, the same for every arch.
# Bump both together when Debian's archive moves on (apt-cache policy
# linux-image-6.1.0-*-amd64 shows what is current). The environment can
# override both for one build, e.g. to take the point release's kernel
# from bookworm main when a mirror's bookworm-security index for an arch
# is broken: KERNEL_ABI=6.1.0-50 KERNEL_VERSION=6.1.176-1 kernel.sh armhf.
KERNEL_ABI=${KERNEL_ABI:-6.1.0-56}
KERNEL_VERSION=${KERNEL_VERSION:-6.1.192-2}
BUSYBOX_VERSION=1:1.35.0-4+deb12u1+b1
BUDGET=${BUDGET:-4194304}

# Modules the init loads, by arch: NBD root, ext4 (crc32c is its soft
# dependency for metadata_csum, so it is named), virtio for QEMU boards,
# SATA, NVMe and USB storage for build disks (a disk the initramfs can't
# see is never wiped), common wired NICs. Dependencies come from
# modules.dep.
COMMON_MODULES="nbd ext4 crc32c_generic virtio_net virtio_pci virtio_mmio virtio_blk ahci sd_mod nvme usb-storage uas"
declare -A ARCH_MODULES=(
	[amd64]="crc32c-intel e1000 e1000e igb r8169 xhci_pci ehci_pci"
	[arm64]="r8169 xhci_pci xhci_plat_hcd"
	[armhf]="r8169 ehci_platform"
)

if [ $# -lt 1 ]; then
	echo "usage: $0 amd64|arm64|armhf [OUT]" >&2
	exit 2
fi
arch=$1
out=${2:-out}
case $arch in
amd64) flavour=amd64 goarch=amd64 goarm= ;;
arm64) flavour=arm64 goarch=arm64 goarm= ;;
armhf) flavour=armmp goarch=arm goarm=7 ;;
*)
	echo "kernel.sh: unknown arch $arch (want amd64, arm64 or armhf)" >&2
	exit 2
	;;
esac
release=$KERNEL_ABI-$flavour
kpkg=linux-image-$release
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
"$here/apt-ensure.sh" kmod dpkg

cache=$(mkdir -p "$out/cache/$arch" && cd "$out/cache/$arch" && pwd)
dest=$out/boot/$arch
mkdir -p "$dest"

# fetch PKG VERSION: the .deb path in the cache, downloaded if missing.
apt_state=$(mkdir -p "$out/cache/apt/$arch" && cd "$out/cache/apt/$arch" && pwd)
apt_opts=(-o APT::Architecture="$arch" -o APT::Architectures="$arch"
	-o Dir::State="$apt_state" -o Dir::State::status="$apt_state/status"
	-o Dir::Cache="$apt_state/cache" -o Acquire::Languages=none
	-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -o APT::Sandbox::User=root)
apt_updated=
fetch() {
	local pkg=$1 version=$2 deb
	# apt-get download names files PKG_VERSION_ARCH.deb with the epoch's
	# colon as %3a.
	deb=$cache/${pkg}_${version/:/%3a}_$arch.deb
	if [ -f "$deb" ]; then
		echo "$deb"
		return
	fi
	if [ -z "$apt_updated" ]; then
		mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial"
		touch "$apt_state/status"
		# Mirrors sometimes serve a broken foreign-arch index: retry, then
		# go on with what downloaded (the download below says if the
		# package is missing).
		apt-get "${apt_opts[@]}" -qq update >&2 || apt-get "${apt_opts[@]}" -qq update >&2 ||
			echo "kernel.sh: apt-get update had errors; trying with what downloaded" >&2
		apt_updated=1
	fi
	(cd "$cache" && TMPDIR=/var/tmp apt-get "${apt_opts[@]}" -qq download "$pkg=$version" >&2) || {
		echo "kernel.sh: cannot download $pkg=$version for $arch; is the pin in scripts/kernel.sh still in Debian's archive?" >&2
		exit 1
	}
	[ -f "$deb" ] || {
		echo "kernel.sh: apt-get download did not produce $deb" >&2
		exit 1
	}
	echo "$deb"
}

# unpack DEB DIR: dpkg -x once per .deb.
unpack() {
	if [ ! -f "$2/.unpacked" ] || [ "$(cat "$2/.unpacked")" != "$(basename "$1")" ]; then
		rm -rf "$2"
		mkdir -p "$2"
		dpkg -x "$1" "$2"
		basename "$1" >"$2/.unpacked"
	fi
}

# mke2fs for the build disk (initramfs/disk runs it), with the libraries
# and loader it links against, at the paths Debian puts them. Taken at the
# archive's current version, recorded in MANIFEST.
E2FS_PKGS="e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 libc6"
case $arch in
amd64) triplet=x86_64-linux-gnu loader=lib64/ld-linux-x86-64.so.2 ;;
arm64) triplet=aarch64-linux-gnu loader=lib/ld-linux-aarch64.so.1 ;;
armhf) triplet=arm-linux-gnueabihf loader=lib/ld-linux-armhf.so.3 ;;
esac
E2FS_FILES="sbin/mke2fs etc/mke2fs.conf lib/$triplet/libext2fs.so.2 lib/$triplet/libe2p.so.2
lib/$triplet/libcom_err.so.2 usr/lib/$triplet/libblkid.so.1 usr/lib/$triplet/libuuid.so.1
lib/$triplet/libc.so.6 $loader"

kdeb=$(fetch "$kpkg" "$KERNEL_VERSION")
bdeb=$(fetch busybox-static "$BUSYBOX_VERSION")
kroot=$cache/kernel
unpack "$kdeb" "$kroot"
unpack "$bdeb" "$cache/busybox"
e2fs_versions=()
for p in $E2FS_PKGS; do
	v=$(apt-cache "${apt_opts[@]}" policy "$p" 2>/dev/null | sed -n 's/^  Candidate: //p')
	if [ -z "$v" ] || [ "$v" = "(none)" ]; then
		[ -n "$apt_updated" ] || { fetch busybox-static "$BUSYBOX_VERSION" >/dev/null; }
		mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial"
		touch "$apt_state/status"
		apt-get "${apt_opts[@]}" -qq update >&2 || true
		apt_updated=1
		v=$(apt-cache "${apt_opts[@]}" policy "$p" | sed -n 's/^  Candidate: //p')
	fi
	unpack "$(fetch "$p" "$v")" "$cache/e2fs/$p"
	e2fs_versions+=("$p=$v")
done
e2fs_args=()
for f in $E2FS_FILES; do
	src=$(ls -d "$cache"/e2fs/*/"$f" 2>/dev/null | head -n1)
	[ -n "$src" ] || { echo "kernel.sh: $f not found in $E2FS_PKGS" >&2; exit 1; }
	e2fs_args+=(-file "$f=$(readlink -f "$src")")
done
moddir=$kroot/lib/modules/$release
[ -f "$moddir/modules.dep" ] || depmod -b "$kroot" "$release"

# The module subset: the wanted modules and everything modules.dep says
# they need.
mods=$cache/modules
rm -rf "$mods"
mkdir -p "$mods/lib/modules/$release"
wanted="$COMMON_MODULES ${ARCH_MODULES[$arch]}"
files=()
for m in $wanted; do
	line=$(grep -E "(^|/)${m//[-_]/[-_]}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" || true)
	if [ -z "$line" ]; then
		if grep -qE "/${m//[-_]/[-_]}\.ko$" "$moddir/modules.builtin"; then
			echo "kernel.sh: $m is built into the $arch kernel" >&2
			continue
		fi
		echo "kernel.sh: module $m is neither in modules.dep nor built into $release" >&2
		exit 1
	fi
	files+=(${line/:/})
done
printf '%s\n' "${files[@]}" | sort -u | while read -r f; do
	mkdir -p "$mods/lib/modules/$release/$(dirname "$f")"
	cp "$moddir/$f" "$mods/lib/modules/$release/$f"
done
cp "$moddir/modules.builtin" "$moddir/modules.order" "$mods/lib/modules/$release/"
depmod -b "$mods" "$release"
# The init reads modules.dep, modules.builtin and modules.alias (it loads
# only the modules whose aliases match the machine's devices, and the
# aliases it names, such as crc32c); drop depmod's other indexes.
find "$mods/lib/modules/$release" -maxdepth 1 -type f -name 'modules.*' \
	! -name modules.dep ! -name modules.builtin ! -name modules.alias -delete

# busybox (1 MB compressed) only for debug builds: rackboot.debug=shell
# needs it, and the budget has no room for it beside mke2fs and libc.
shell_args=()
if [ "${DEBUG_SHELL:-0}" = 1 ]; then
	shell_args=(-file bin/busybox="$cache/busybox/bin/busybox" -symlink bin/sh=busybox)
	BUDGET=$((BUDGET + 1100000))
fi

# The init, static, for the arch.
(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm \
	go build -trimpath -ldflags "-s -w" -o "$cache/init" ./initramfs/init)

(cd "$repo" && go run ./initramfs/mkinitramfs \
	-o "$(cd "$dest" && pwd)/initramfs.cpio.gz" -init "$cache/init" \
	"${shell_args[@]}" "${e2fs_args[@]}" \
	-modules "$mods" -budget "$BUDGET")

install -m 0644 "$kroot/boot/vmlinuz-$release" "$dest/vmlinuz"
if [ "$arch" = arm64 ] && [ "$(head -c2 "$dest/vmlinuz" | od -An -tx1 | tr -d ' ')" = 1f8b ]; then
	gzip -dc "$dest/vmlinuz" >"$dest/Image.tmp" && mv "$dest/Image.tmp" "$dest/Image"
fi

{
	echo "# rackboot kernel and initramfs (scripts/kernel.sh) for $arch"
	echo "kernel	$kpkg	$KERNEL_VERSION	$(sha256sum <"$dest/vmlinuz" | cut -d' ' -f1)"
	echo "busybox	busybox-static	$BUSYBOX_VERSION"
	printf 'mke2fs	%s\n' "${e2fs_versions[@]}"
	echo "initramfs	$(sha256sum <"$dest/initramfs.cpio.gz" | cut -d' ' -f1)"
	(cd "$mods/lib/modules/$release" && find . -name '*.ko*' | sed 's|^\./|module	|' | sort)
} >"$dest/MANIFEST"
echo "kernel.sh: $dest: vmlinuz ($kpkg $KERNEL_VERSION), initramfs.cpio.gz ($(stat -c %s "$dest/initramfs.cpio.gz") bytes)" >&2
