//go:build !robustness

package cow

// crashSeeds is the number of random workloads TestCrashConsistency runs;
// `make test-robustness` runs many more.
const crashSeeds = 40
