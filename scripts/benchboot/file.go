package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
)

const fileChunk = 4 << 20

// createFile writes size bytes of incompressible pseudo-random data to path
// (ChaCha8 with a random seed), readable by everyone: the servers that
// drop privileges must be able to read it.
func createFile(ctx context.Context, path string, size int64) error {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return fmt.Errorf("seeding file content: %w", err)
	}
	src := mrand.NewChaCha8(seed)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("creating file: %w", err)
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
			return fmt.Errorf("writing file: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing file: %w", err)
	}
	return nil
}

// sha256File returns the hex SHA-256 of the file at path.
func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hashing file: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, fileChunk)); err != nil {
		return "", fmt.Errorf("hashing file: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
