// Command rackboot-agent is the board agent that runs in a board's NBD
// root: see package github.com/rackboot/rackboot/agent.
package main

import (
	"os"

	"github.com/rackboot/rackboot/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "devel"

func main() { os.Exit(agent.Main(version, os.Args[1:], os.Stderr)) }
