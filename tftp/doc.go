// Package tftp serves boot files over TFTP: a read-only server (RFC 1350)
// with the blksize (RFC 2348) and tsize (RFC 2349) options, on top of
// github.com/pin/tftp/v3.
//
// # Policy
//
// The package knows nothing about boards. A [Server] asks its [Handler]
// for the contents of each requested file, given the client's address;
// [FileHandler] serves a directory tree through an os.Root. Names are
// checked by [CleanPath] before any Handler sees them.
//
// # Wire behaviour
//
// Write requests are refused with error 2, malformed requests with error 4.
// A missing file is error 1, a refused name or file error 2, and any other
// Handler failure error 0 with a generic message (the cause goes to the
// log). Option names are matched case-insensitively (RFC 2347), blksize is
// granted up to 65464 (or, with Server.FitMTU, lowered to fit the
// receiving interface's MTU), and options other than
// blksize and tsize (timeout, windowsize, multicast) are ignored, which
// clients take as a refusal. Modes octet and netascii are served; tsize is
// not reported in netascii mode.
//
// # Caveats
//
// These come from pin/tftp v3.2.0:
//   - Once a transfer has started, every error the server sends (a read
//     failure, a shutdown) carries code 1, file not found, with a generic
//     message.
//   - A transfer's socket is bound to the wildcard address, so its packets
//     leave from the address the kernel picks for the route back to the
//     client. On an interface with several addresses, point clients (DHCP
//     next-server, siaddr) at the primary one: PXELINUX ignores replies
//     from another address.
//   - Anticipation (Server.Anticipate) sends a window of blocks before
//     waiting for ACKs, without negotiation; a lost block costs a timeout.
//   - pin/tftp's single-port mode panics with anticipation and is never
//     used.
//
// # Concurrency
//
// A Server serves many transfers at once, each on its own socket and
// goroutine, up to MaxConcurrent.
package tftp
