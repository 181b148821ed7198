package main

import "os"

// readChunk is how much one read asks for; the buffer grows towards the cap
// as output arrives, so a quiet command costs nothing up front.
const readChunk = 64 << 10

// capture keeps up to limit bytes of one output stream. Past the limit the
// stream is still read to its end (the child must not block on a full pipe)
// and dropped, as qemu-ga does, and truncated is set.
type capture struct {
	limit     int64
	buf       []byte
	truncated bool
}

// drain reads r until EOF or error and closes it. Only the draining
// goroutine touches the capture until it returns.
func (c *capture) drain(r *os.File) {
	defer r.Close()
	var scratch []byte
	for {
		room := c.limit - int64(len(c.buf))
		if room <= 0 {
			if scratch == nil {
				scratch = make([]byte, readChunk)
			}
			n, err := r.Read(scratch)
			if n > 0 {
				c.truncated = true
			}
			if err != nil {
				return
			}
			continue
		}
		want := int64(readChunk)
		if want > room {
			want = room
		}
		if int64(cap(c.buf)-len(c.buf)) < want {
			grown := make([]byte, len(c.buf), growTo(len(c.buf), want, c.limit))
			copy(grown, c.buf)
			c.buf = grown
		}
		n, err := r.Read(c.buf[len(c.buf) : int64(len(c.buf))+want])
		c.buf = c.buf[:len(c.buf)+n]
		if err != nil {
			return
		}
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
