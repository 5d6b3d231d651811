package benchkit

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"os"
)

const fileChunk = 4 << 20

// CreateRandomFile writes size bytes of incompressible pseudo-random data
// (ChaCha8 with a random seed) to a new file at path with permissions perm.
// noun names the file in error messages ("file", "image").
func CreateRandomFile(ctx context.Context, path string, size int64, perm fs.FileMode, noun string) error {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return fmt.Errorf("seeding %s content: %w", noun, err)
	}
	src := mrand.NewChaCha8(seed)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("creating %s: %w", noun, err)
	}
	defer f.Close()
	buf := make([]byte, fileChunk)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), size-off)]
		_, _ = src.Read(b) // never fails
		if _, err := f.Write(b); err != nil {
			return fmt.Errorf("writing %s: %w", noun, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", noun, err)
	}
	return nil
}

// SHA256File returns the hex SHA-256 of the file at path; noun names the
// file in error messages.
func SHA256File(path, noun string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hashing %s: %w", noun, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, fileChunk)); err != nil {
		return "", fmt.Errorf("hashing %s: %w", noun, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
