// Command rackboot-agent is the board agent that runs in a board's NBD
// root: see package github.com/rackboot/rackboot/agent.
package main

import (
	"os"

	"github.com/rackboot/rackboot/agent"
)

func main() { os.Exit(agent.Main(os.Args[1:], os.Stderr)) }
