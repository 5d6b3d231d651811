#!/usr/bin/env bash
# bench-boot.sh [benchboot flags]: compare rackboot's DHCP, TFTP and HTTP
# servers with dnsmasq, ISC Kea, tftpd-hpa and nginx (see scripts/benchboot).
# Needs root: everything runs in network namespaces the benchmark creates.
# Installs the Debian packages it needs if they are missing, builds
# ./cmd/rackboot into a temporary directory and runs the benchmark.
# QUICK=1 adds -quick (16 MiB file, one round, 1000 DHCP handshakes);
# REPORT=FILE adds -out FILE (the table as Markdown, for the README).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/apt-ensure.sh dnsmasq-base kea-dhcp4-server tftpd-hpa nginx curl iproute2

tmp=$(mktemp -d /var/tmp/bench-boot.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
version=$(git describe --tags --always --dirty 2>/dev/null || echo devel)
go build -trimpath -ldflags "-X main.version=$version" -o "$tmp/rackboot" ./cmd/rackboot

flags=(-rackboot "$tmp/rackboot")
[[ "${QUICK:-}" == 1 ]] && flags+=(-quick)
[[ -n "${REPORT:-}" ]] && flags+=(-out "$REPORT")
go run ./scripts/benchboot "${flags[@]}" "$@"
