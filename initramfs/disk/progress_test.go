package disk

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestProgressPrinter(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	clock := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	p := ProgressPrinter(&out, "wiping /dev/sda", 30*time.Second, now)
	const gb = 1_000_000_000
	step := func(d time.Duration, m WipeMethod, done int64) {
		clock = clock.Add(d)
		p(m, done, 1000*gb)
	}
	step(10*time.Second, ZeroOut, 1*gb) // the method's first report: no line
	step(10*time.Second, ZeroOut, 2*gb) // too soon
	step(20*time.Second, ZeroOut, 4*gb) // 30 s after the first: 3 GB in 30 s
	step(10*time.Second, ZeroOut, 5*gb) // too soon after the line
	step(30*time.Second, ZeroOut, 1000*gb)
	want := []string{
		"wiping /dev/sda by zeroout: 0% (4.0 of 1000.0 GB), about 2h46m0s left",
		"wiping /dev/sda by zeroout: 100% (1000.0 of 1000.0 GB)",
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("printed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A new method starts its estimate afresh.
	out.Reset()
	step(time.Hour, Overwrite, 10*gb)
	step(30*time.Second, Overwrite, 20*gb)
	if got, want := strings.TrimSpace(out.String()), "wiping /dev/sda by overwrite: 2% (20.0 of 1000.0 GB), about 49m0s left"; got != want {
		t.Errorf("after a method change printed %q; want %q", got, want)
	}
}
