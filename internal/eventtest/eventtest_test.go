package eventtest

import (
	"log/slog"
	"testing"
)

func TestCounter(t *testing.T) {
	t.Parallel()
	var c Counter
	third := c.Reached(3)
	go func() {
		for range 3 {
			c.Add()
		}
	}()
	c.Wait(t, 2, "adds")
	<-third
	select {
	case <-c.Reached(4):
		t.Fatal("Reached(4) closed after 3 adds")
	default:
	}
	if n := c.Add(); n != 4 || c.Count() != 4 {
		t.Errorf("Add = %d, Count = %d; want 4, 4", n, c.Count())
	}
}

func TestLogCounter(t *testing.T) {
	t.Parallel()
	lc := NewLogCounter(slog.DiscardHandler)
	log := slog.New(lc).With("k", "v").WithGroup("g")
	log.Debug("dropped")
	log.Info("dropped")
	log.Info("kept")
	if got := lc.Of("dropped").Count(); got != 2 {
		t.Errorf("dropped counted %d times; want 2", got)
	}
	if got := lc.Of("kept").Count(); got != 1 {
		t.Errorf("kept counted %d times; want 1", got)
	}
}
