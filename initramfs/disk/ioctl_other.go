//go:build !linux

package disk

import (
	"errors"
	"os"
)

// The block-device operations exist only on Linux; elsewhere List and
// Select work, and Wipe and Build fail with errors.ErrUnsupported.

func blockSize(*os.File) (int64, error)              { return 0, errors.ErrUnsupported }
func logicalSectorSize(*os.File) (int, error)        { return 0, errors.ErrUnsupported }
func discard(*os.File, int64, int64) error           { return errors.ErrUnsupported }
func secureDiscard(*os.File, int64, int64) error     { return errors.ErrUnsupported }
func zeroOut(*os.File, int64, int64) error           { return errors.ErrUnsupported }
func rereadPartitions(*os.File) error                { return errors.ErrUnsupported }
func punchHole(*os.File, int64, int64) error         { return errors.ErrUnsupported }
func openExclusive(string) (*os.File, error)         { return nil, errors.ErrUnsupported }
func addPartition(*os.File, int, int64, int64) error { return errors.ErrUnsupported }
