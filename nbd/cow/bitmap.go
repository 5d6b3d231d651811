package cow

import (
	"math/bits"
	"slices"
)

// leafBits is the number of chunks one bitmap leaf covers: 4096 chunks, 16
// MiB of device at 4 KiB chunks, in 512 bytes of memory.
const (
	leafShift = 12
	leafBits  = 1 << leafShift
	leafWords = leafBits / 64
)

// bitmap is a sparse bit set over chunk indices. Memory grows with the
// number of 16 MiB regions that hold a set bit, not with the device size.
// It is not safe for concurrent use.
type bitmap struct {
	leaves map[uint64]*[leafWords]uint64
	count  uint64 // number of set bits
}

func newBitmap() *bitmap {
	return &bitmap{leaves: make(map[uint64]*[leafWords]uint64)}
}

func (b *bitmap) get(i uint64) bool {
	l := b.leaves[i>>leafShift]
	if l == nil {
		return false
	}
	j := i & (leafBits - 1)
	return l[j/64]&(1<<(j%64)) != 0
}

// set sets bit i to v and reports whether it changed.
func (b *bitmap) set(i uint64, v bool) bool {
	k := i >> leafShift
	l := b.leaves[k]
	if l == nil {
		if !v {
			return false
		}
		l = new([leafWords]uint64)
		b.leaves[k] = l
	}
	j := i & (leafBits - 1)
	w, m := j/64, uint64(1)<<(j%64)
	if (l[w]&m != 0) == v {
		return false
	}
	if v {
		l[w] |= m
		b.count++
	} else {
		l[w] &^= m
		b.count--
		if *l == ([leafWords]uint64{}) {
			delete(b.leaves, k)
		}
	}
	return true
}

// setRange sets bits [start, start+n) to v.
func (b *bitmap) setRange(start, n uint64, v bool) {
	for i := start; i < start+n; i++ {
		b.set(i, v)
	}
}

// runLength returns how many bits from i on (at most max) have the same
// value as bit i, and that value.
func (b *bitmap) runLength(i, max uint64) (uint64, bool) {
	v := b.get(i)
	n := uint64(0)
	for n < max {
		k := (i + n) >> leafShift
		l := b.leaves[k]
		if l == nil {
			if v {
				return n, v
			}
			// A missing leaf is all zeroes: skip to its end.
			n += leafBits - ((i + n) & (leafBits - 1))
			continue
		}
		j := (i + n) & (leafBits - 1)
		w := l[j/64] >> (j % 64)
		if v {
			w = ^w
		}
		// w's trailing zeroes are the bits equal to v.
		avail := 64 - j%64
		z := uint64(bits.TrailingZeros64(w))
		if z >= avail {
			n += avail
			continue
		}
		n += z
		return min(n, max), v
	}
	return max, v
}

// leafKeys returns the keys of the leaves in ascending order.
func (b *bitmap) leafKeys() []uint64 {
	keys := make([]uint64, 0, len(b.leaves))
	for k := range b.leaves {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// setBits calls f for each set bit in ascending order.
func (b *bitmap) setBits(f func(i uint64)) {
	for _, k := range b.leafKeys() {
		l := b.leaves[k]
		for w, word := range l {
			for word != 0 {
				t := uint64(bits.TrailingZeros64(word))
				f(k<<leafShift | uint64(w)*64 | t)
				word &= word - 1
			}
		}
	}
}
