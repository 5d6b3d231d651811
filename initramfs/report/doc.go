// Package report times the initramfs's steps, prints each on the console
// and reports it to the appliance (POST /api/v1/report with the boot's
// bearer token, JSON {"step","status","duration_ns","error"}).
//
// # Bounded
//
// Reports are best effort and never hold up the boot for long: they are
// queued and sent by one goroutine once the network is up ([Reporter.Online]),
// each with a short timeout; after [DefaultMaxFailures] failures in a row,
// or once [Reporter.Budget] of sending time is spent, the rest are only
// printed. [Reporter.Flush] waits, within a deadline, for the queue to
// drain before switch_root, reboot or power-off.
package report
