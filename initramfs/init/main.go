// Command init is rackboot's initramfs init (PID 1): it brings a board
// from kernel start to its root over NBD and switch_roots into it. See
// package github.com/rackboot/rackboot/initramfs for the steps.
package main

func main() { run() }
