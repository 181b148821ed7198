package main

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkExecTrueRoundTrip is guest-exec /bin/true followed by
// guest-exec-status until it reports exited, in-process through
// CommandPlugin.Run (qemu-ga over its socket: ≈ 17 ms here).
func BenchmarkExecTrueRoundTrip(b *testing.B) {
	a := newTestAgent(b, "")
	polls := 0
	for b.Loop() {
		pid := a.exec(`{"path":"/bin/true"}`)
		args := fmt.Sprintf(`{"pid":%d}`, pid)
		for {
			polls++
			if st := a.mustCall("guest-exec-status", args); st["exited"] == true {
				break
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	b.ReportMetric(float64(polls)/float64(b.N), "polls/op")
}
