package engine

import (
	"sync"
	"testing"
	"time"
)

// Replies finishing in any order are written in the order of their places;
// a place finished without a write (a reply not written) lets the next go.
func TestReplyOrder(t *testing.T) {
	var r replyOrder
	ending := make(chan struct{})
	places := make([]uint64, 6)
	for i := range places {
		places[i] = r.take()
	}
	var mu sync.Mutex
	var written []uint64
	var wg sync.WaitGroup
	// Finish in reverse order, place 3 without writing.
	for i := len(places) - 1; i >= 0; i-- {
		wg.Add(1)
		go func(p uint64) {
			defer wg.Done()
			if p == 3 {
				r.finish(p)
				return
			}
			r.wait(p, ending)
			mu.Lock()
			written = append(written, p)
			mu.Unlock()
			r.finish(p)
			r.finish(p) // twice: harmless
		}(places[i])
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	want := []uint64{1, 2, 4, 5, 6}
	if len(written) != len(want) {
		t.Fatalf("written %v, want %v", written, want)
	}
	for i := range want {
		if written[i] != want[i] {
			t.Fatalf("written %v, want %v", written, want)
		}
	}
	// Place 0 is no place; a session ending releases a waiter.
	r.wait(0, ending)
	p := r.take()
	r.take()
	q := r.take()
	close(ending)
	done := make(chan struct{})
	go func() { r.wait(q, ending); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a waiter stayed blocked after the session ended")
	}
	_ = p
}
