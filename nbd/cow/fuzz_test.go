package cow

import (
	"bytes"
	"testing"
)

// FuzzParseLog feeds arbitrary bytes to the metadata log parser: it must
// not panic, must only return runs inside the device, and a log rebuilt
// from what it accepted must parse to the same runs.
func FuzzParseLog(f *testing.F) {
	h := appendHeader(nil, logHeader{chunkShift: 12, size: 1 << 20})
	f.Add(h)
	f.Add(appendBatch(bytes.Clone(h), 1, []run{{start: 0, n: 3, alloc: true}, {start: 10, n: 1}}))
	f.Add(appendBatch(appendBatch(bytes.Clone(h), 1, []run{{start: 5, n: 2, alloc: true}}), 2, []run{{start: 255, n: 1, alloc: true}}))
	f.Add(appendBatch(bytes.Clone(h), 2, []run{{start: 0, n: 1, alloc: true}})) // out of sequence
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<16 {
			return
		}
		r, err := parseLog(b)
		if err != nil {
			return
		}
		hdr, runs, seq, valid := r.header, r.runs, r.seq, r.valid
		if valid < logHeaderLen || valid > len(b) {
			t.Fatalf("valid prefix %d of %d bytes", valid, len(b))
		}
		for _, r := range runs {
			if r.n == 0 || r.start+uint64(r.n) > hdr.chunks() {
				t.Fatalf("run %+v outside %d chunks", r, hdr.chunks())
			}
		}
		// The valid prefix alone parses the same.
		r2, err := parseLog(b[:valid])
		runs2, seq2, valid2 := r2.runs, r2.seq, r2.valid
		if err != nil || seq2 != seq || valid2 != valid || len(runs2) != len(runs) {
			t.Fatalf("valid prefix reparses differently: %v seq %d/%d len %d/%d", err, seq2, seq, valid2, valid)
		}
		// Applying the runs to a bitmap never panics and stays in range.
		bm := newBitmap()
		for _, r := range runs {
			bm.setRange(r.start, uint64(r.n), r.alloc)
		}
		if bm.count > hdr.chunks() {
			t.Fatalf("%d chunks set of %d", bm.count, hdr.chunks())
		}
	})
}
