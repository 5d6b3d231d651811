package benchkit

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CacheHold keeps a file's pages in the page cache for as long as it is
// held: mapped and locked (mlock), they can be neither reclaimed nor paged
// out. A benchmark of servers that read one image means to measure them
// reading it from memory, as a rack host reads its hot master image; on a
// machine whose kernel reclaims idle file cache proactively (this one runs
// DAMON paging out unmapped file pages touched less than once per 5 s for
// 30 s), a row of sparse random reads would otherwise find part of the
// image evicted, and measure the disk for whichever server came later.
type CacheHold struct {
	path string
	mem  []byte
}

// HoldInCache reads the file at path into the page cache and locks it
// there until Release. It needs CAP_IPC_LOCK or an RLIMIT_MEMLOCK as large
// as the file.
func HoldInCache(path string) (*CacheHold, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("holding %s in the page cache: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("holding %s in the page cache: %w", path, err)
	}
	if st.Size() == 0 {
		return &CacheHold{path: path}, nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("holding %s in the page cache: mmap: %w", path, err)
	}
	if err := unix.Mlock(mem); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("holding %s in the page cache: mlock of %d bytes: %w", path, len(mem), err)
	}
	return &CacheHold{path: path, mem: mem}, nil
}

// Resident returns the share of the held file's pages in the page cache.
func (h *CacheHold) Resident() (float64, error) {
	if h.mem == nil {
		return 1, nil
	}
	return resident(h.mem)
}

// Release unlocks and unmaps the file; the pages stay cached until the
// kernel wants them. It is safe to call more than once.
func (h *CacheHold) Release() error {
	if h.mem == nil {
		return nil
	}
	mem := h.mem
	h.mem = nil
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("releasing %s from the page cache: %w", h.path, err)
	}
	return nil
}

// resident asks mincore(2) which pages of a file mapping are cached.
func resident(mem []byte) (float64, error) {
	page := os.Getpagesize()
	vec := make([]byte, (len(mem)+page-1)/page)
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return 0, fmt.Errorf("mincore: %w", errno)
	}
	in := 0
	for _, v := range vec {
		in += int(v & 1)
	}
	return float64(in) / float64(len(vec)), nil
}
