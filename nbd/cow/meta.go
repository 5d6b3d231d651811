package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The allocation metadata of a layer is an append-only log in the file
// "map":
//
//	header: "RBCOWLOG" | version u32 | chunk shift u32 | device size u64 |
//	        reserved u32 | crc32c u32                          (32 bytes)
//	batch:  magic u32 | run count u32 | sequence u64 |
//	        runs (start chunk u64 | chunk count u32 | state u32) ... |
//	        crc32c u32 over the batch
//
// A batch is appended and fsynced by each Sync, after the data file was
// fsynced, and records the state (allocated or not) of every chunk that
// changed since the previous batch, as runs. Replay applies the batches in
// order and stops at the first one that is torn, fails its checksum or
// breaks the sequence: that is an append a crash interrupted, whose data
// was never acknowledged as durable. Compaction rewrites the log as one
// batch and renames it into place.

const (
	logMagic     = "RBCOWLOG"
	logVersion   = 1
	logHeaderLen = 32
	batchMagic   = 0x52424254 // "RBBT"
	batchHdrLen  = 16
	runLen       = 16
	// maxBatchRuns bounds one batch, so that a corrupt count can't make
	// replay allocate much.
	maxBatchRuns = 1 << 22
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is returned when a layer's metadata is damaged in a way a
// crash can't explain (a checksummed record that makes no sense, a bad
// header).
var ErrCorrupt = errors.New("corrupt copy-on-write metadata")

type logHeader struct {
	chunkShift uint32
	size       uint64
}

func (h logHeader) chunks() uint64 {
	cs := uint64(1) << h.chunkShift
	return (h.size + cs - 1) / cs
}

func appendHeader(b []byte, h logHeader) []byte {
	start := len(b)
	b = append(b, logMagic...)
	b = binary.BigEndian.AppendUint32(b, logVersion)
	b = binary.BigEndian.AppendUint32(b, h.chunkShift)
	b = binary.BigEndian.AppendUint64(b, h.size)
	b = binary.BigEndian.AppendUint32(b, 0)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

func parseHeader(b []byte) (logHeader, error) {
	if len(b) < logHeaderLen || string(b[:8]) != logMagic {
		return logHeader{}, fmt.Errorf("map header: bad magic: %w", ErrCorrupt)
	}
	if crc32.Checksum(b[:28], castagnoli) != binary.BigEndian.Uint32(b[28:]) {
		return logHeader{}, fmt.Errorf("map header: checksum: %w", ErrCorrupt)
	}
	if v := binary.BigEndian.Uint32(b[8:]); v != logVersion {
		return logHeader{}, fmt.Errorf("map header: version %d: %w", v, ErrCorrupt)
	}
	h := logHeader{chunkShift: binary.BigEndian.Uint32(b[12:]), size: binary.BigEndian.Uint64(b[16:])}
	if h.chunkShift < 9 || h.chunkShift > 24 || h.size == 0 || h.size > 1<<50 {
		return logHeader{}, fmt.Errorf("map header: chunk shift %d, size %d: %w", h.chunkShift, h.size, ErrCorrupt)
	}
	return h, nil
}

// run is a range of chunks in one state.
type run struct {
	start uint64
	n     uint32
	alloc bool
}

func appendBatch(b []byte, seq uint64, runs []run) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint32(b, batchMagic)
	b = binary.BigEndian.AppendUint32(b, uint32(len(runs)))
	b = binary.BigEndian.AppendUint64(b, seq)
	for _, r := range runs {
		b = binary.BigEndian.AppendUint64(b, r.start)
		b = binary.BigEndian.AppendUint32(b, r.n)
		var s uint32
		if r.alloc {
			s = 1
		}
		b = binary.BigEndian.AppendUint32(b, s)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// parseLog decodes a whole map file. It returns the header, the runs of the
// valid batches in order, the sequence number of the last valid batch (0
// if none) and the length of the valid prefix. A torn tail is not an error.
func parseLog(b []byte) (logHeader, []run, uint64, int, error) {
	h, err := parseHeader(b)
	if err != nil {
		return logHeader{}, nil, 0, 0, err
	}
	nchunks := h.chunks()
	var runs []run
	var seq uint64
	off := logHeaderLen
	for {
		rest := b[off:]
		if len(rest) < batchHdrLen+4 || binary.BigEndian.Uint32(rest) != batchMagic {
			break
		}
		count := uint64(binary.BigEndian.Uint32(rest[4:]))
		bseq := binary.BigEndian.Uint64(rest[8:])
		if count > maxBatchRuns || bseq != seq+1 {
			break
		}
		end := batchHdrLen + count*runLen
		if uint64(len(rest)) < end+4 {
			break
		}
		if crc32.Checksum(rest[:end], castagnoli) != binary.BigEndian.Uint32(rest[end:]) {
			break
		}
		for i := range count {
			p := rest[batchHdrLen+i*runLen:]
			r := run{start: binary.BigEndian.Uint64(p), n: binary.BigEndian.Uint32(p[8:])}
			state := binary.BigEndian.Uint32(p[12:])
			if r.n == 0 || state > 1 || r.start >= nchunks || uint64(r.n) > nchunks-r.start {
				return logHeader{}, nil, 0, 0, fmt.Errorf("map batch %d: run %d+%d state %d of %d chunks: %w",
					bseq, r.start, r.n, state, nchunks, ErrCorrupt)
			}
			r.alloc = state == 1
			runs = append(runs, r)
		}
		seq = bseq
		off += int(end) + 4
	}
	return h, runs, seq, off, nil
}

// runsOf turns the chunks set in changed, with their current state in
// alloc, into runs.
func runsOf(changed, alloc *bitmap) []run {
	var runs []run
	changed.setBits(func(i uint64) {
		a := alloc.get(i)
		if n := len(runs); n > 0 {
			last := &runs[n-1]
			if last.start+uint64(last.n) == i && last.alloc == a && last.n < 1<<31 {
				last.n++
				return
			}
		}
		runs = append(runs, run{start: i, n: 1, alloc: a})
	})
	return runs
}
