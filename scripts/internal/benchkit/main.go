package benchkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// RunFunc runs a benchmark command with its arguments and output streams;
// ctx ends on SIGINT or SIGTERM.
type RunFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Main runs a benchmark command, name, and exits. When run returns
// context.Canceled (after SIGINT or SIGTERM) it prints "name: " and
// interrupted and exits with status 130; after any other error it prints
// the error and exits with status 1.
func Main(name, interrupted string, run RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(os.Stderr, "%s: %s\n", name, interrupted)
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// RackbootBinary checks that path, given by -rackboot, is an executable
// file, and returns it.
func RackbootBinary(path string) (string, error) {
	if path == "" {
		return "", errors.New("no rackboot binary given (-rackboot)")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("finding rackboot: %w", err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("rackboot %s is not an executable file", path)
	}
	return path, nil
}
