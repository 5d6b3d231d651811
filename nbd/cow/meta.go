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
//	batch:  magic u32 | run count u32 | sequence u64 | payload length u32 |
//	        payload: per run, in ascending order, the gap since the end of
//	        the previous run (uvarint), the chunk count (uvarint) and the
//	        state (one byte, 1 = in the layer) |
//	        crc32c u32 over the batch
//
// Runs are a few bytes each, so scattered 4 KiB writes cost about 1/1000
// of their size in metadata.
//
// A batch is appended and fsynced by each Sync, after the data file was
// fsynced, and records the state of every chunk that changed since the
// previous batch. What happened since the last Sync is in the live map
// (live.go), which survives a crash of the process but not of the machine.
//
// Replay applies the batches in order and stops at the first one that is
// torn, fails its checksum or breaks the sequence: an append a crash
// interrupted. Compaction rewrites the log as one durable batch and
// renames it into place.

const (
	logMagic     = "RBCOWLOG"
	logVersion   = 1
	logHeaderLen = 32
	batchMagic   = 0x52424254 // "RBBT"
	batchHdrLen  = 20
	// runLen is the largest encoding of one run.
	runLen = 2*binary.MaxVarintLen64 + 1
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

// appendBatch encodes runs, which must be in ascending order and not
// overlap, as a batch.
func appendBatch(b []byte, seq uint64, runs []run) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint32(b, batchMagic)
	b = binary.BigEndian.AppendUint32(b, uint32(len(runs)))
	b = binary.BigEndian.AppendUint64(b, seq)
	plen := len(b)
	b = binary.BigEndian.AppendUint32(b, 0) // payload length, below
	payload := len(b)
	var end uint64
	for _, r := range runs {
		b = binary.AppendUvarint(b, r.start-end)
		b = binary.AppendUvarint(b, uint64(r.n))
		if r.alloc {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		end = r.start + uint64(r.n)
	}
	binary.BigEndian.PutUint32(b[plen:], uint32(len(b)-payload))
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// replay is what parseLog found.
type replay struct {
	header logHeader
	runs   []run  // of the valid batches, in order
	seq    uint64 // of the last valid batch, 0 if none
	valid  int    // length of the valid prefix
}

// parseLog decodes a whole map file. A torn tail is not an error.
func parseLog(b []byte) (replay, error) {
	h, err := parseHeader(b)
	if err != nil {
		return replay{}, err
	}
	r := replay{header: h}
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
		plen := uint64(binary.BigEndian.Uint32(rest[16:]))
		if count > maxBatchRuns || bseq != seq+1 || plen > count*runLen {
			break
		}
		end := batchHdrLen + plen
		if uint64(len(rest)) < end+4 {
			break
		}
		if crc32.Checksum(rest[:end], castagnoli) != binary.BigEndian.Uint32(rest[end:]) {
			break
		}
		batch, err := decodeRuns(rest[batchHdrLen:end], count, nchunks)
		if err != nil {
			return replay{}, fmt.Errorf("map batch %d: %w", bseq, err)
		}
		runs = append(runs, batch...)
		seq = bseq
		off += int(end) + 4
	}
	r.runs, r.seq, r.valid = runs, seq, off
	return r, nil
}

// decodeRuns decodes count runs from a checksummed batch payload: a
// payload that doesn't decode to exactly that, in order and inside the
// device, is corruption, not a torn write.
func decodeRuns(p []byte, count, nchunks uint64) ([]run, error) {
	runs := make([]run, 0, count)
	var end uint64
	for range count {
		gap, k := binary.Uvarint(p)
		if k <= 0 {
			return nil, fmt.Errorf("run gap: %w", ErrCorrupt)
		}
		p = p[k:]
		n, k := binary.Uvarint(p)
		if k <= 0 || len(p) < k+1 {
			return nil, fmt.Errorf("run length: %w", ErrCorrupt)
		}
		state := p[k]
		p = p[k+1:]
		if gap > nchunks || n == 0 || n > 1<<31 || state > 1 || end+gap >= nchunks || n > nchunks-(end+gap) {
			return nil, fmt.Errorf("run %d+%d state %d of %d chunks: %w", end+gap, n, state, nchunks, ErrCorrupt)
		}
		r := run{start: end + gap, n: uint32(n), alloc: state == 1}
		runs = append(runs, r)
		end = r.start + n
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%d bytes after the runs: %w", len(p), ErrCorrupt)
	}
	return runs, nil
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
