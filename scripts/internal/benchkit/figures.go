package benchkit

import "slices"

// Figures holds a benchmark's figures by row key and server, one per
// round.
type Figures map[string]map[string][]float64

// Add records a figure of one row and server.
func (f Figures) Add(key, server string, v float64) {
	if f[key] == nil {
		f[key] = map[string][]float64{}
	}
	f[key][server] = append(f[key][server], v)
}

// Median returns the median of the figures of one row and server, and
// whether there was any.
func (f Figures) Median(key, server string) (float64, bool) { return Median(f[key][server]) }

// Median returns the median of vals (the mean of the middle two for an
// even count), and whether there was any.
func Median[T ~int64 | ~float64](vals []T) (T, bool) {
	v := slices.Sorted(slices.Values(vals))
	switch n := len(v); {
	case n == 0:
		return 0, false
	case n%2 == 1:
		return v[n/2], true
	default:
		return (v[n/2-1] + v[n/2]) / 2, true
	}
}
