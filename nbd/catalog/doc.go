// Package catalog maps NBD export names to base images and copy-on-write
// sessions: export NAME is image NAME read-only, export NAME@SESSION is a
// writable session layered on it, created on first use and kept until
// discarded. It is the policy behind `rackboot nbd` and implements
// nbd.Resolver; it knows nothing of boards.
package catalog
