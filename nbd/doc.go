// Package nbd implements the Network Block Device protocol: a server that
// serves exports chosen by a Resolver, and a client for tests and for
// handing a negotiated socket to the Linux kernel.
//
// The wire format follows the NBD protocol document (proto.md in the
// NetworkBlockDevice/nbd repository): fixed-newstyle negotiation with
// NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST and
// NBD_OPT_ABORT, and simple replies in the transmission phase for READ,
// WRITE (with FUA), FLUSH, TRIM, WRITE_ZEROES and DISC. TLS, structured
// replies, meta contexts and extended headers are refused.
//
// # Policy
//
// The package knows nothing about boards or sessions. The server asks a
// [Resolver] for the export a client names, given the client's address;
// the resolver returns an [Export] wrapping a [Device]. Devices are
// io.ReaderAt and io.WriterAt with Size and Sync, and optionally [Trimmer]
// and [Zeroer].
//
// # Concurrency
//
// A [Server] handles many connections, and many requests per connection,
// concurrently. A [Client] pipelines requests from concurrent callers.
package nbd
