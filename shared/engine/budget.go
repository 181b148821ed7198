package engine

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Default memory budgets and deadlines of a session, used when the
// supervisor sends zero.
const (
	// DefaultSessionMemoryMax holds one request at the 64 MiB limit
	// beside the base64 text of one 48 MiB read, with room to spare.
	DefaultSessionMemoryMax = 192 << 20
	// DefaultChannelMemoryMax is shared by all sessions of a channel.
	DefaultChannelMemoryMax = 512 << 20
	// DefaultWriteTimeout: a peer that reads nothing of a reply for this
	// long has stopped reading.
	DefaultWriteTimeout = 60 * time.Second
	// DefaultRequestIdleTimeout: a peer that sends nothing more of a
	// started request for this long has stopped mid-request.
	DefaultRequestIdleTimeout = 30 * time.Second
)

// budget counts the bytes held on behalf of the peers of one channel
// (requests queued or running, replies being written, the partial request
// being read) against a limit per session and one per channel. A session
// over either stops reading until replies have gone out: memory is bounded
// by the limits, not by what a peer sends.
type budget struct {
	channelMax int64
	sessionMax int64
	held       atomic.Int64
	// waiting counts sessions waiting for room: only then does a release
	// take the lock to wake them (every request releases bytes).
	waiting atomic.Int32

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when bytes are released
}

func newBudget(channelMax, sessionMax int64) *budget {
	return &budget{channelMax: channelMax, sessionMax: sessionMax, changed: make(chan struct{})}
}

// sessionHold is one session's share of its channel's budget.
type sessionHold struct {
	b    *budget
	held atomic.Int64
}

func (h *sessionHold) add(n int64) {
	if n == 0 {
		return
	}
	h.held.Add(n)
	h.b.held.Add(n)
	if n < 0 && h.b.waiting.Load() > 0 {
		h.b.mu.Lock()
		close(h.b.changed)
		h.b.changed = make(chan struct{})
		h.b.mu.Unlock()
	}
}

func (h *sessionHold) fits() bool {
	return h.held.Load() < h.b.sessionMax && h.b.held.Load() < h.b.channelMax
}

// room reports whether the session may read more, without a lock when it
// may. When it may not, the session counts as waiting (done must be called
// once the wait is over) and wait is closed once some bytes are released.
// A release adds to held before it looks at waiting, and the session adds
// to waiting before it looks at held again: one of them sees the other.
func (h *sessionHold) room() (ok bool, wait <-chan struct{}, done func()) {
	if h.fits() {
		return true, nil, nil
	}
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	h.b.waiting.Add(1)
	if h.fits() {
		h.b.waiting.Add(-1)
		return true, nil, nil
	}
	return false, h.b.changed, func() { h.b.waiting.Add(-1) }
}

// WaitRoom blocks until the session may read more: the bytes held for it
// and for its channel are under their budgets (limits session_memory_max
// and channel_memory_max). Dialects call it before each read. A non-zero
// deadline (that of a partial request, see RequestIdleTimeout) ends the
// wait with os.ErrDeadlineExceeded: a session stuck with half a request
// must give its bytes up, or sessions all waiting for room would wait for
// ever.
func (s *streamSession) WaitRoom(ctx context.Context, deadline time.Time) error {
	var expired <-chan time.Time
	for {
		ok, wait, done := s.hold.room()
		if ok {
			return nil
		}
		if !s.over.Swap(true) {
			s.Logger().Debug("session paused: memory budget reached", "origin", s.origin, "held", s.hold.held.Load())
		}
		if expired == nil && !deadline.IsZero() {
			t := time.NewTimer(time.Until(deadline))
			defer t.Stop()
			expired = t.C
		}
		var err error
		select {
		case <-wait:
		case <-expired:
			err = os.ErrDeadlineExceeded
		case <-ctx.Done():
			err = ctx.Err()
		}
		done()
		if err != nil {
			return err
		}
	}
}

// HoldPending tells how many bytes of a request not yet complete the
// dialect holds (0 once it is complete or dropped): they count against the
// budget, and a peer that stops sending them meets RequestIdleTimeout.
func (s *streamSession) HoldPending(n int64) {
	s.hold.add(n - s.pending)
	s.pending = n
}

// RequestIdleTimeout is how long a started request may wait for its next
// bytes (limit request_idle_timeout); 0: no limit.
func (s *streamSession) RequestIdleTimeout() time.Duration { return s.e.limits.requestIdle }

// SetReadDeadline sets the deadline of the session's next reads where the
// transport has deadlines; it reports whether it has. Dialects use it with
// RequestIdleTimeout.
func (s *streamSession) SetReadDeadline(t time.Time) bool {
	if d, ok := s.conn.(interface{ SetReadDeadline(time.Time) error }); ok {
		return d.SetReadDeadline(t) == nil
	}
	return false
}

// RequestTimeout is the channel's request_timeout; 0: the dialect's
// default.
func (s *streamSession) RequestTimeout() time.Duration {
	return time.Duration(s.st.cfg.GetRequestTimeoutMs()) * time.Millisecond
}

// CloseWrite shuts the writing side of a socket session down, under the
// write lock so that it follows every reply written.
func (s *streamSession) CloseWrite() error {
	c, ok := s.conn.(interface{ CloseWrite() error })
	if !ok {
		return errors.New("the session's transport cannot close its writing side alone")
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return c.CloseWrite()
}

// writeParts writes a reply under the write deadline: a peer that reads
// nothing of it for write_timeout has stopped reading. Large replies go in
// chunks, each with a fresh deadline, so a slow reader that keeps reading is
// not cut off. The caller holds wmu.
func (s *streamSession) writeParts(parts [][]byte) error {
	timeout := s.e.limits.writeTimeout
	d, hasDeadline := s.conn.(interface{ SetWriteDeadline(time.Time) error })
	if timeout <= 0 || !hasDeadline || d.SetWriteDeadline(time.Now().Add(timeout)) != nil {
		bufs := net.Buffers(parts)
		_, err := bufs.WriteTo(s.conn)
		return err
	}
	defer d.SetWriteDeadline(time.Time{})
	const chunk = 4 << 20
	var total int
	for _, p := range parts {
		total += len(p)
	}
	if total <= chunk {
		bufs := net.Buffers(parts) // one writev
		_, err := bufs.WriteTo(s.conn)
		return err
	}
	for _, p := range parts {
		for len(p) > 0 {
			n := min(len(p), chunk)
			if _, err := s.conn.Write(p[:n]); err != nil {
				return err
			}
			p = p[n:]
			_ = d.SetWriteDeadline(time.Now().Add(timeout))
		}
	}
	return nil
}

// writeStalled handles a reply the peer stopped reading: a socket session
// ends (the peer is gone or hostile); a virtio-serial session, which cannot
// end, drops the rest of the reply and goes on, and the host resynchronises
// with 0xFF and guest-sync-delimited as it does after any timeout.
func (s *streamSession) writeStalled(err error) {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	if s.persistent {
		s.Logger().Warn("reply dropped: the host read nothing of it for write_timeout", "origin", s.origin, "write_timeout", s.e.limits.writeTimeout)
		return
	}
	s.Logger().Warn("session closed: the peer read nothing of a reply for write_timeout", "origin", s.origin, "write_timeout", s.e.limits.writeTimeout)
	s.conn.Close()
}
