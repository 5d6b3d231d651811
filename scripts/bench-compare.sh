#!/usr/bin/env bash
# bench-compare.sh [REF]: run the Go micro-benchmarks (`make bench`) on the
# commit REF (default HEAD) and on the work tree, interleaved in one run so
# that both see the same machine, and print benchstat's comparison.
# COUNT (default 6) is the number of runs per side, BENCH the -bench regexp.
set -euo pipefail
cd "$(dirname "$0")/.."

ref=${1:-HEAD}
count=${COUNT:-6}
bench=${BENCH:-.}
benchtime=${BENCHTIME:-1s}
# benchstat has no tagged releases: pin the pseudo-version.
benchstat=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

commit=$(git rev-parse --verify "$ref^{commit}")
tmp=$(mktemp -d /var/tmp/bench-compare.XXXXXX)
cleanup() {
	git worktree remove --force "$tmp/base" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
git worktree add --detach "$tmp/base" "$commit" >/dev/null

# Compile each side's test binaries once, then alternate runs of the two:
# a burst of load on the machine then hits both sides alike.
# A benchmark runs in its package's directory (testdata), as under go test.
pkgs=$(go list -f '{{.Dir}}' ./nbd/... | sed "s|^$PWD/||")
build() { # tree bindir
	local d
	mkdir -p "$2"
	for d in $pkgs; do
		[[ -d "$1/$d" ]] || continue # not in this tree
		(cd "$1/$d" && go test -c -o "$2/${d//\//_}.test" .)
	done
}
build "$tmp/base" "$tmp/bin-base"
build "$PWD" "$tmp/bin-new"

run() { # tree bindir out
	local d t
	for d in $pkgs; do
		t="$2/${d//\//_}.test"
		[[ -e "$t" ]] || continue # no test files in the package
		(cd "$1/$d" && "$t" -test.run='^$' -test.bench="$bench" -test.benchmem \
			-test.benchtime="$benchtime" -test.count=1) >>"$3"
	done
}
for i in $(seq "$count"); do
	echo "bench-compare: round $i of $count" >&2
	run "$tmp/base" "$tmp/bin-base" "$tmp/base.txt"
	run "$PWD" "$tmp/bin-new" "$tmp/new.txt"
done

echo "base: $ref ($(git log -1 --format='%h %s' "$commit"))"
echo "new:  work tree ($(git describe --always --dirty))"
go run "$benchstat" base="$tmp/base.txt" new="$tmp/new.txt"
