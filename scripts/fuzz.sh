#!/usr/bin/env bash
# fuzz.sh: run every Go fuzz target in the module for FUZZTIME each.
# `go test -fuzz` takes one target per package run, hence the loop.
set -euo pipefail
FUZZTIME=${FUZZTIME:-30s}
cd "$(dirname "$0")/.."
fail=0
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "== $pkg $target ($FUZZTIME)"
		if ! go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" -fuzzminimizetime=2s "$pkg"; then
			fail=1
		fi
	done
done
exit $fail
