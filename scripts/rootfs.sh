#!/usr/bin/env bash
# rootfs.sh RECIPE ARCH [OUT]: build the master root image of
# rootfs/recipes/RECIPE.yaml for ARCH (amd64, arm64, armhf) into
# OUT/images/RECIPE-ARCH/ (root.img, manifest.json); OUT defaults to out.
# Downloaded packages are kept in OUT/cache/rootfs.
#
# rootfs.sh --deps ARCH: only prepare this machine to build for ARCH.
#
# Needs root. Installs what it needs (mmdebstrap, e2fsprogs, systemctl;
# for a foreign ARCH qemu-user-static and arch-test) and, for a foreign
# ARCH, mounts binfmt_misc and registers the qemu-user-static interpreter
# (with the F flag, so that it works in the chroot). That registration is
# global to the machine's kernel and lasts until reboot.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

deps() {
	local arch=$1 host q conf
	"$here/apt-ensure.sh" mmdebstrap e2fsprogs
	command -v systemctl >/dev/null || "$here/apt-ensure.sh" systemd
	host=$(dpkg --print-architecture)
	[ "$arch" = "$host" ] && return 0
	[ "$host" = arm64 ] && [ "$arch" = armhf ] && return 0
	case $arch in
	amd64) q=x86_64 ;;
	arm64) q=aarch64 ;;
	armhf) q=arm ;;
	*)
		echo "rootfs.sh: unknown arch $arch (want amd64, arm64 or armhf)" >&2
		exit 2
		;;
	esac
	"$here/apt-ensure.sh" qemu-user-static arch-test
	if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
		mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || {
			echo "rootfs.sh: cannot mount binfmt_misc: this kernel can't run $arch binaries through qemu-user (CONFIG_BINFMT_MISC, or a container without the privilege)" >&2
			exit 1
		}
	fi
	if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$q" ]; then
		conf=/usr/lib/binfmt.d/qemu-$q.conf
		[ -f "$conf" ] || {
			echo "rootfs.sh: $conf missing (qemu-user-static too old?)" >&2
			exit 1
		}
		grep -v '^#' "$conf" >/proc/sys/fs/binfmt_misc/register
		echo "rootfs.sh: registered qemu-$q with binfmt_misc" >&2
	fi
}

if [ $# -ge 1 ] && [ "$1" = --deps ]; then
	[ $# -eq 2 ] || { echo "usage: $0 --deps ARCH" >&2; exit 2; }
	deps "$2"
	exit 0
fi
if [ $# -lt 2 ]; then
	recipes=$(for f in "$repo"/rootfs/recipes/*.yaml; do basename "$f" .yaml; done | tr '\n' ' ')
	echo "usage: $0 RECIPE ARCH [OUT]    (recipes: $recipes)" >&2
	exit 2
fi
recipe=$1 arch=$2 out=${3:-out}
if [ "$(id -u)" -ne 0 ]; then
	echo "rootfs.sh: building a root image needs root" >&2
	exit 1
fi
file=$repo/rootfs/recipes/$recipe.yaml
[ -f "$file" ] || { echo "rootfs.sh: no recipe $file" >&2; exit 2; }
deps "$arch"
cd "$repo"
version=$(git describe --tags --always --dirty 2>/dev/null || echo devel)
exec go run ./rootfs/mkrootfs build -recipe "$file" -arch "$arch" \
	-out "$out/images" -cache "$out/cache/rootfs" -repo "$repo" -agent-version "$version" ${VERBOSE:+-v}
