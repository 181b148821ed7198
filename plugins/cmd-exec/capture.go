package main

import (
	"os"
	"sync"
	"time"
)

// readChunk is how much one read asks for; the buffer grows towards the cap
// as output arrives, so a quiet command costs nothing up front.
const readChunk = 64 << 10

// capture keeps up to limit bytes of one output stream. Past the limit the
// stream is still read to its end (the child must not block on a full pipe)
// and dropped, as qemu-ga does, and truncated is set.
//
// The kept bytes have offsets 0, 1, 2, ... in the order they came (dropped
// bytes get none). guest-exec-read takes them from an offset on while the
// child runs; asking for offset K releases everything before K, so a host
// that keeps reading holds at most limit bytes in the guest however much
// the command prints. guest-exec-status returns what is still held.
//
// Once a host reads with guest-exec-read the stream is flow-controlled
// instead: a full buffer stops the draining (the child then blocks on its
// output, as a program whose terminal stopped scrolling) until the host
// releases bytes, so nothing is lost. A host that has not read for
// idle (the stream_idle option) is taken for gone, and bytes are dropped again, so a
// forgotten command does not hang on its output for ever.
type capture struct {
	limit int64
	idle  time.Duration // how long a reading host may stay silent (stream_idle)

	mu        sync.Mutex
	buf       []byte // held bytes: offsets base .. base+len(buf)
	base      int64
	truncated bool
	eof       bool
	changed   chan struct{} // closed (and replaced) when bytes or EOF arrive
	// Flow control (see above): streaming since the first guest-exec-read,
	// lastRead its latest, released closed (and replaced) by a release.
	streaming bool
	lastRead  time.Time
	released  chan struct{}
}

func newCapture(limit int64, idle time.Duration) *capture {
	return &capture{limit: limit, idle: idle, changed: make(chan struct{}), released: make(chan struct{})}
}

// drain reads r until EOF or error and closes it.
func (c *capture) drain(r *os.File) {
	defer r.Close()
	scratch := make([]byte, readChunk)
	for {
		n, err := r.Read(scratch)
		c.mu.Lock()
		c.keep(scratch[:n])
		if err != nil {
			c.eof = true
		}
		c.notify()
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// notify wakes the guest-exec-reads waiting for output; mu held.
func (c *capture) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// keep appends p, waiting for room while a host streams and dropping what
// does not fit otherwise; called with mu held (released while it waits).
func (c *capture) keep(p []byte) {
	for len(p) > 0 {
		room := c.limit - int64(len(c.buf))
		if room > 0 {
			n := min(int64(len(p)), room)
			c.appendHeld(p[:n])
			p = p[n:]
			continue
		}
		idle := time.Until(c.lastRead.Add(c.idle))
		if !c.streaming || idle <= 0 {
			c.streaming = false
			c.truncated = true
			return
		}
		released := c.released
		c.notify() // what is held is there to read
		c.mu.Unlock()
		t := time.NewTimer(idle)
		select {
		case <-released:
		case <-t.C:
		}
		t.Stop()
		c.mu.Lock()
	}
}

// stopFlowControl drops output again instead of holding the child back:
// the host stopped the command and must not wait for the output to end.
func (c *capture) stopFlowControl() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streaming = false
	close(c.released)
	c.released = make(chan struct{})
}

// appendHeld appends p to the held bytes; mu held.
func (c *capture) appendHeld(p []byte) {
	if cap(c.buf)-len(c.buf) < len(p) {
		grown := make([]byte, len(c.buf), growTo(len(c.buf), int64(len(p)), c.limit))
		copy(grown, c.buf)
		c.buf = grown
	}
	c.buf = append(c.buf, p...)
}

// held returns a copy of every held byte and the truncation flag.
func (c *capture) held() ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.buf...), c.truncated
}

// chunk is what guest-exec-read returns of one stream.
type chunk struct {
	data      []byte
	next      int64 // the offset to ask for next
	more      bool  // bytes are held past next
	truncated bool
	eof       bool
}

// readAt releases the bytes before offset and returns up to max bytes
// from it, with a channel that is closed when more arrive. An offset
// behind what is held (released, or never asked for) reads from the oldest
// held byte; one past the end is an error of the host's.
func (c *capture) readAt(offset int64, max int) (chunk, <-chan struct{}, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	end := c.base + int64(len(c.buf))
	if offset > end {
		return chunk{}, nil, false
	}
	c.streaming, c.lastRead = true, time.Now()
	if offset > c.base {
		c.release(offset - c.base)
	}
	n := min(len(c.buf), max)
	ch := chunk{data: append([]byte(nil), c.buf[:n]...), next: c.base + int64(n), more: n < len(c.buf),
		truncated: c.truncated, eof: c.eof}
	return ch, c.changed, true
}

// release drops the first n held bytes; called with mu held. The buffer is
// copied down once most of it is released, so its memory goes back.
func (c *capture) release(n int64) {
	c.buf = c.buf[n:]
	c.base += n
	close(c.released)
	c.released = make(chan struct{})
	if cap(c.buf) > readChunk && len(c.buf) < cap(c.buf)/4 {
		c.buf = append(make([]byte, 0, max(2*len(c.buf), readChunk)), c.buf...)
	}
}

// growTo doubles the capacity (amortised appends) without passing the cap.
func growTo(length int, want, limit int64) int {
	n := int64(2 * length)
	if n < int64(length)+want {
		n = int64(length) + want
	}
	if n > limit {
		n = limit
	}
	return int(n)
}
