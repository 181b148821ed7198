package dataplane

import (
	"errors"
	"syscall"
	"time"
)

// AcceptBackoff paces an accept loop after temporary failures: out of
// descriptors or memory, the pending connection stays queued, and retrying
// at once would spin on it. An aborted or interrupted accept is retried at
// once. Any other error ends the loop.
type AcceptBackoff struct {
	delay time.Duration
}

// Retry reports whether the loop should accept again after err, having
// waited as long as needed (from 5 ms, doubling up to 1 s), or at once when
// done is closed (then the answer is false).
func (b *AcceptBackoff) Retry(err error, done <-chan struct{}) bool {
	switch {
	case errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EINTR), errors.Is(err, syscall.EPROTO):
		return true
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE),
		errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.ENOMEM):
	default:
		return false
	}
	if b.delay == 0 {
		b.delay = 5 * time.Millisecond
	} else {
		b.delay = min(2*b.delay, time.Second)
	}
	t := time.NewTimer(b.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// Delay is the wait before the last retry, for logs.
func (b *AcceptBackoff) Delay() time.Duration { return b.delay }

// Reset is called after a successful accept.
func (b *AcceptBackoff) Reset() { b.delay = 0 }
