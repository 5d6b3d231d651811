package disk

import (
	"fmt"
	"io"
	"time"
)

// ProgressPrinter returns a WipeOptions.Progress that writes a line to w
// at most once per every, for a wipe that takes long enough to need one:
//
//	LABEL by zeroout: 37% (370.0 of 1000.2 GB), about 4m10s left
//
// The estimate comes from the current method's rate since its first
// report. now is the clock (time.Now if nil).
func ProgressPrinter(w io.Writer, label string, every time.Duration, now func() time.Time) func(m WipeMethod, done, size int64) {
	if now == nil {
		now = time.Now
	}
	var (
		method      WipeMethod
		start, last time.Time
		startDone   int64
	)
	return func(m WipeMethod, done, size int64) {
		t := now()
		if m != method {
			// A new method starts from zero; its first chunk already
			// ran, so its rate is only known from the next one.
			method, start, last, startDone = m, t, t, done
			return
		}
		if t.Sub(last) < every || size <= 0 {
			return
		}
		last = t
		line := fmt.Sprintf("%s by %s: %d%% (%.1f of %.1f GB)", label, m, done*100/size, float64(done)/1e9, float64(size)/1e9)
		if elapsed := t.Sub(start); done > startDone && done < size && elapsed > 0 {
			left := time.Duration(float64(elapsed) * float64(size-done) / float64(done-startDone))
			line += fmt.Sprintf(", about %s left", left.Round(time.Second))
		}
		fmt.Fprintln(w, line)
	}
}
