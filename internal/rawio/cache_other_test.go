//go:build !linux

package rawio

import "os"

func dropCache(*os.File) {}
