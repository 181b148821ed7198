package engine

import (
	"testing"
	"time"
)

// A caller refused in a loop gets denialBurst lines per window, then one
// that counts what went unlogged.
func TestDenialLogBounded(t *testing.T) {
	var l denialLog
	now := time.Unix(1000, 0)
	logged := 0
	for i := 0; i < 1000; i++ {
		if ok, _ := l.admit(now.Add(time.Duration(i) * time.Millisecond)); ok {
			logged++
		}
	}
	if logged != denialBurst {
		t.Fatalf("%d of 1000 refusals within a second logged, want %d", logged, denialBurst)
	}
	ok, dropped := l.admit(now.Add(denialWindow + time.Second))
	if !ok || dropped != 1000-denialBurst {
		t.Fatalf("after the window: logged %v, dropped %d, want %d", ok, dropped, 1000-denialBurst)
	}
	if ok, dropped := l.admit(now.Add(denialWindow + 2*time.Second)); !ok || dropped != 0 {
		t.Fatalf("next: %v %d", ok, dropped)
	}
}
