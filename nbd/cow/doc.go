// Package cow implements copy-on-write block devices: a read-only base
// image plus a write layer on local disk, and a store of named sessions
// that each own one layer. It knows nothing about boards or protocols.
//
// # Layout
//
// A layer is a directory holding "data", a sparse file the size of the
// base where each written chunk lives at its own offset, and "map", an
// append-only checksummed log of which chunks are in the layer. Memory use
// is a sparse bitmap that grows with what was written.
//
// # Durability
//
// [Device.Sync] fsyncs the data, then appends and fsyncs the allocation
// changes. After a power cut, [Open] finds every write a Sync covered; see
// [Device] for the exact contract.
//
// # Sessions
//
// A [Store] keeps one layer per session name under a state directory, and
// shares one [Device] among all handles of a session. Sessions survive
// reconnects and restarts until discarded.
package cow
