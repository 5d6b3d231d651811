package nbdroot

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestWithin(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	if err := within(t.Context(), time.Hour, func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("within = %v; want f's error", err)
	}
	// A mount that never returns is given up on.
	stuck := make(chan struct{})
	defer close(stuck)
	if err := within(t.Context(), time.Millisecond, func() error { <-stuck; return nil }); err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("within = %v; want a timeout", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := within(ctx, time.Hour, func() error { <-stuck; return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("within = %v; want the context's error", err)
	}
}
