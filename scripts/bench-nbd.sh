#!/usr/bin/env bash
# bench-nbd.sh [benchnbd flags]: compare rackboot's NBD server with nbd-server,
# qemu-nbd and nbdkit on the same image and clients (see scripts/benchnbd).
# Installs the Debian packages it needs if they are missing, builds
# ./cmd/rackboot into a temporary directory and runs the benchmark.
# QUICK=1 adds -quick (256 MiB image, 3 s rows); PIN=S/C adds -pin S/C (servers
# on CPUs S, fio on CPUs C); REPORT=FILE adds -out FILE.
#
# The benchmark runs in a network namespace of its own, on its loopback,
# with TCP congestion control TCP_CC: cubic by default, Linux's default;
# TCP_CC=host keeps the host's namespace and setting. On loopback, a
# congestion control that paces (BBR) sets each connection's rate from its
# own delivery estimate, which follows how promptly the client wakes to
# read: the figures then measure that feedback more than the server
# (README, "Benchmarks").
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(fio libnbd-bin nbd-server qemu-utils nbdkit iproute2)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "bench-nbd: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	install=(apt-get install -y -o DPkg::Lock::Timeout=600 --no-install-recommends "${pkgs[@]}")
	# A fresh machine has no package lists yet.
	"${install[@]}" || { apt-get -o DPkg::Lock::Timeout=600 update && "${install[@]}"; }
fi

tmp=$(mktemp -d /var/tmp/bench-nbd.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
version=$(git describe --tags --always --dirty 2>/dev/null || echo devel)
go build -trimpath -ldflags "-X main.version=$version" -o "$tmp/rackboot" ./cmd/rackboot

flags=(-rackboot "$tmp/rackboot")
[[ "${QUICK:-}" == 1 ]] && flags+=(-quick)
[[ -n "${PIN:-}" ]] && flags+=(-pin "$PIN")
[[ -n "${REPORT:-}" ]] && flags+=(-out "$REPORT")
go build -o "$tmp/benchnbd" ./scripts/benchnbd
# Not exec: the trap removes $tmp when the benchmark ends.
cc=${TCP_CC:-cubic}
if [[ "$cc" == host ]]; then
	"$tmp/benchnbd" "${flags[@]}" "$@"
	exit
fi
unshare --net -- bash -c 'set -e
	ip link set lo up
	sysctl -qw net.ipv4.tcp_congestion_control="$0" ||
		{ echo "bench-nbd: TCP congestion control $0 is not available: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control)" >&2; exit 1; }
	exec "$@"' "$cc" "$tmp/benchnbd" "${flags[@]}" "$@"
