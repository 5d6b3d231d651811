//go:build robustness

package cow

const crashSeeds = 3000
