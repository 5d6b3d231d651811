#!/usr/bin/env bash
# boot-tree.sh OUTDIR: build the static boot tree rackboot serves over TFTP
# from Debian packages (installing the missing ones with apt-ensure.sh):
#
#   pxelinux.0, lpxelinux.0  PXELINUX, BIOS (pxelinux)
#   ldlinux.c32              loaded by both at start; it parses the config
#                            and boots Linux itself, so a plain DEFAULT /
#                            LABEL / KERNEL / APPEND / IPAPPEND config needs
#                            no other module (syslinux-common)
#   undionly.kpxe            iPXE for BIOS PXE, over the ROM's UNDI (ipxe)
#   ipxe.efi, snponly.efi    iPXE for UEFI x86-64: all drivers, or the
#                            firmware's SNP network driver only (ipxe)
#
# and OUTDIR/MANIFEST, one line per file: name, SHA-256, Debian package,
# version and source path, tab-separated and sorted.
#
# Reproducible: the files are the packages' bytes with the packages'
# mtimes, and MANIFEST takes the newest of them. Idempotent: a file is
# written only when its content changes, so re-running with nothing changed
# rewrites nothing. Files that an earlier MANIFEST listed and this one does
# not are removed; nothing else in OUTDIR is touched.
set -euo pipefail
export LC_ALL=C

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)

# name in OUTDIR, then source path.
files=(
	pxelinux.0 /usr/lib/PXELINUX/pxelinux.0
	lpxelinux.0 /usr/lib/PXELINUX/lpxelinux.0
	ldlinux.c32 /usr/lib/syslinux/modules/bios/ldlinux.c32
	undionly.kpxe /usr/lib/ipxe/undionly.kpxe
	ipxe.efi /usr/lib/ipxe/ipxe.efi
	snponly.efi /usr/lib/ipxe/snponly.efi
)

"$here/apt-ensure.sh" pxelinux syslinux-common ipxe

# Every .c32 module we ship must find the libraries it links against.
if command -v readelf >/dev/null; then
	for ((i = 0; i < ${#files[@]}; i += 2)); do
		[[ ${files[i]} == *.c32 ]] || continue
		for lib in $(readelf -d "${files[i + 1]}" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
			if ! printf '%s\n' "${files[@]}" | grep -qxF "$lib"; then
				echo "boot-tree: ${files[i]} needs $lib, which is not in the tree" >&2
				exit 1
			fi
		done
	done
fi

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# install_file SRC NAME: put SRC at OUTDIR/NAME atomically, mode 0644.
install_file() {
	local staged
	staged=$(mktemp "$out/.$2.XXXXXX")
	cp --preserve=timestamps "$1" "$staged"
	chmod 0644 "$staged"
	mv -f "$staged" "$out/$2"
}

manifest=$tmp/MANIFEST
newest=0
changed=0
for ((i = 0; i < ${#files[@]}; i += 2)); do
	name=${files[i]}
	src=${files[i + 1]}
	real=$(readlink -f "$src") # ipxe.efi is a link to /boot/ipxe.efi
	# dpkg -S prints "package: path" (or "package:arch: path").
	pkg=$(dpkg -S "$src" | head -n1 | cut -d: -f1)
	version=$(dpkg-query -W -f='${Version}' "$pkg")
	sum=$(sha256sum <"$real" | cut -d' ' -f1)
	printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$sum" "$pkg" "$version" "$src" >>"$manifest"
	mtime=$(stat -c %Y "$real")
	((mtime > newest)) && newest=$mtime
	if ! cmp -s "$real" "$out/$name"; then
		install_file "$real" "$name"
		echo "boot-tree: $name from $pkg $version" >&2
		changed=1
	fi
done

{
	echo "# rackboot boot tree (scripts/boot-tree.sh): file, sha256, Debian package, version, source"
	sort "$manifest"
} >"$tmp/MANIFEST.new"
touch -d "@$newest" "$tmp/MANIFEST.new"

if [ -f "$out/MANIFEST" ]; then
	# Remove what the previous tree had and this one hasn't.
	while IFS=$'\t' read -r old _; do
		case $old in '' | '#'* | */* | .* | MANIFEST) continue ;; esac
		if ! cut -f1 "$manifest" | grep -qxF "$old" && [ -e "$out/$old" ]; then
			rm -f -- "$out/$old"
			echo "boot-tree: removed $old" >&2
			changed=1
		fi
	done <"$out/MANIFEST"
fi
if ! cmp -s "$tmp/MANIFEST.new" "$out/MANIFEST"; then
	install_file "$tmp/MANIFEST.new" MANIFEST
	changed=1
fi
if [ "$changed" = 0 ]; then
	echo "boot-tree: $out is up to date" >&2
fi
