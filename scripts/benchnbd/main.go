// Command benchnbd compares rackboot's NBD server with the reference servers
// nbd-server (copyonwrite = true), qemu-nbd --snapshot and nbdkit --filter=cow
// on the same base image and with the same clients (fio's nbd ioengine, built
// on libnbd), and prints a table with rackboot's ratio to the best reference,
// and a second table with each server's CPU time per I/O or per GB in the
// time-based fio rows.
//
// It is run by scripts/bench-nbd.sh (make bench-nbd), which installs the
// reference servers and builds rackboot first:
//
//	go run ./scripts/benchnbd -rackboot /tmp/rackboot [-quick] [-servers LIST] [-out FILE]
//
// # Method
//
// A base image of random content is created under -workdir and served on
// 127.0.0.1, each server on a port the kernel picked. Read rows use
// rackboot's read-only export and the other servers' only (copy-on-write)
// export; write rows go to a copy-on-write export. The base image's SHA-256
// is checked before and after the run.
//
// The run is -count rounds. In a round every server is started, and they
// run side by side for the connect storm and the throughput rows: each row
// is measured on one server at a time (the others idle), on all of them
// before the next row starts, so that a change in the machine's load
// during the run falls on every server alike, not on whichever server ran
// then. The order rotates each round. Then the servers are stopped, and
// each is started once more alone, with an empty write layer, for the
// write-layer cost row.
//
// While fio runs, the CPU time (utime+stime) of every process in the
// server's process group is sampled from /proc. Its rate over the measured
// part of the run (after fio's ramp_time, up to fio's report, less a margin
// at either end), over fio's IOPS or bandwidth, is the CPU time per I/O or
// per GB.
//
// # Caveats
//
// Child processes are killed on exit, including on SIGINT. nbd-server
// daemonizes; it is stopped through its PID file and process group.
package main

import "github.com/rackboot/rackboot/scripts/internal/benchkit"

func main() { benchkit.Main("benchnbd", "interrupted", run) }
