// Command writer is the test root's workload for the agent's reconnect
// test: it appends numbered, checksummed records to a file on the root,
// each followed by fsync, and prints its progress; an fsync that takes
// longer than -stall is the root stalling. It stops -after records past
// the first stall (or at -timeout), then drops the page cache and reads
// every record back from the device.
//
// Lines it prints:
//
//	WRITER i=N                      progress, every 25 records
//	WRITER stall i=N dur=D          a write+fsync that took D
//	WRITER-DONE records=N good=G bad=B maxop=D stall_at=I timeout=false
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"hash/crc32"
	"os"
	"time"
)

// Record is "rec NNNNNNNN t=MMMMMMMMMMMMM CCCCCCCC\n": index, Unix
// milliseconds, CRC-32 of what precedes it.
func record(i int, t time.Time) []byte {
	b := fmt.Appendf(nil, "rec %08d t=%013d ", i, t.UnixMilli())
	return fmt.Appendf(b, "%08x\n", crc32.ChecksumIEEE(b))
}

func main() {
	path := flag.String("file", "/data.log", "file to append to")
	stall := flag.Duration("stall", 2*time.Second, "a write+fsync this long is a stall")
	after := flag.Int("after", 60, "records to write after the first stall")
	timeout := flag.Duration("timeout", 8*time.Minute, "give up after this long")
	flag.Parse()

	f, err := os.OpenFile(*path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		fmt.Println("WRITER error:", err)
		os.Exit(1)
	}
	start := time.Now()
	var maxOp time.Duration
	stallAt, since := -1, 0
	timedOut := false
	n := 0
	for ; ; n++ {
		t0 := time.Now()
		if _, err := f.Write(record(n, t0)); err != nil {
			fmt.Printf("WRITER error: write %d: %v\n", n, err)
			break
		}
		if err := f.Sync(); err != nil {
			fmt.Printf("WRITER error: fsync %d: %v\n", n, err)
			break
		}
		d := time.Since(t0)
		if d > maxOp {
			maxOp = d
		}
		if d >= *stall {
			fmt.Printf("WRITER stall i=%d dur=%s\n", n, d.Round(time.Millisecond))
			if stallAt < 0 {
				stallAt = n
			}
		}
		if stallAt >= 0 {
			since++
		}
		if n%25 == 0 {
			fmt.Printf("WRITER i=%d\n", n)
		}
		if stallAt >= 0 && since > *after {
			n++
			break
		}
		if time.Since(start) > *timeout {
			timedOut = true
			n++
			break
		}
	}
	f.Close()

	// Read back from the device, not from the page cache.
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
	good, bad := verify(*path, n)
	fmt.Printf("WRITER-DONE records=%d good=%d bad=%d maxop=%s stall_at=%d timeout=%t\n",
		n, good, bad, maxOp.Round(time.Millisecond), stallAt, timedOut)
}

// verify reads the file back and counts the records in sequence with a
// good checksum, and the others.
func verify(path string, n int) (good, bad int) {
	f, err := os.Open(path)
	if err != nil {
		fmt.Println("WRITER error:", err)
		return 0, n
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for i := 0; sc.Scan(); i++ {
		line := append(sc.Bytes(), '\n')
		var idx int
		var ms int64
		var crc uint32
		if _, err := fmt.Sscanf(string(line), "rec %08d t=%013d %08x\n", &idx, &ms, &crc); err != nil || idx != i ||
			crc32.ChecksumIEEE(line[:bytes.LastIndexByte(line[:len(line)-1], ' ')+1]) != crc {
			if bad < 5 {
				fmt.Printf("WRITER bad record %d: %q\n", i, line)
			}
			bad++
			continue
		}
		good++
	}
	if good+bad != n {
		fmt.Printf("WRITER read %d records, wrote %d\n", good+bad, n)
		bad += max(n-good-bad, 0)
	}
	return good, bad
}
