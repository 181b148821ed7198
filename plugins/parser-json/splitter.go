package main

import (
	"bytes"
	"fmt"

	"github.com/guest-agent/guest-agent/shared/dataplane"
)

// resyncByte is qemu-ga's delimiter: a host writes 0xFF to make the agent
// drop whatever partial request it holds (guest-sync-delimited).
const resyncByte = 0xFF

// splitter cuts a byte stream into top-level JSON values the way QEMU's JSON
// streamer does: it tracks nesting and strings, so several requests in one
// write and one request over many writes both work. It never parses; the
// dialect does that on the complete value.
type splitter struct {
	max int64 // largest request kept; bigger ones are skipped and reported
	// pool, when set, provides the buffers of large values: a megabyte
	// write arrives in pieces and would otherwise leave every size it grew
	// through as garbage.
	pool *dataplane.BufferPool

	cur      []byte // the value being collected
	started  bool
	depth    int
	inString bool
	escape   bool
	scalar   bool // a top-level scalar (never valid, but must be answered)
	skipping bool // over the limit: counting, not keeping
	size     int64
}

// emit receives one complete value, or a non-empty problem for a value that
// cannot be handled (too large). The value is only valid during the call
// unless owned is true: large values are handed over rather than copied (and
// may go back to the splitter's pool once used).
type emitFunc func(value []byte, owned bool, problem string)

// handOver is the size from which a value's buffer is given to the consumer
// instead of being reused (a megabyte write is not copied again).
const handOver = 64 << 10

// partial reports whether a request has started and not ended.
func (s *splitter) partial() bool { return s.started }

// held is the memory the partial request holds (none while skipping one
// over the limit).
func (s *splitter) held() int64 {
	if !s.started || s.skipping {
		return 0
	}
	return int64(cap(s.cur))
}

func (s *splitter) reset() {
	s.cur = s.cur[:0]
	s.started, s.inString, s.escape, s.scalar, s.skipping = false, false, false, false, false
	s.depth, s.size = 0, 0
	if cap(s.cur) > handOver {
		s.pool.Put(s.cur) // do not pin a large request's buffer
		s.cur = nil
	}
}

// feed consumes b, calling emit for every complete value.
func (s *splitter) feed(b []byte, emit emitFunc) {
	for len(b) > 0 {
		// 0xFF resets the stream wherever it appears; it cannot occur in
		// valid UTF-8, so no valid request is cut by it.
		if i := bytes.IndexByte(b, resyncByte); i >= 0 {
			s.consume(b[:i], emit)
			s.reset()
			b = b[i+1:]
			continue
		}
		s.consume(b, emit)
		return
	}
}

func (s *splitter) keep(b []byte) {
	s.size += int64(len(b))
	if s.skipping {
		return
	}
	if s.size > s.max {
		s.skipping = true
		s.cur = s.cur[:0]
		return
	}
	if need := len(s.cur) + len(b); need > cap(s.cur) && need >= handOver {
		grown := s.pool.Get(max(need, 2*cap(s.cur)))[:len(s.cur)]
		copy(grown, s.cur)
		s.pool.Put(s.cur)
		s.cur = grown
	}
	s.cur = append(s.cur, b...)
}

func (s *splitter) finish(emit emitFunc) {
	switch {
	case s.skipping:
		emit(nil, false, fmt.Sprintf("request of more than %d bytes refused (limit max_request_bytes)", s.max))
	case len(s.cur) >= handOver:
		v := s.cur
		s.cur = nil
		emit(v, true, "")
	default:
		emit(s.cur, false, "")
	}
	s.reset()
}

func (s *splitter) consume(b []byte, emit emitFunc) {
	for len(b) > 0 {
		if !s.started {
			// Skip whitespace between values.
			i := 0
			for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
				i++
			}
			b = b[i:]
			if len(b) == 0 {
				return
			}
			s.started = true
			switch b[0] {
			case '{', '[':
				s.depth = 1
			case '"':
				s.inString = true
				s.scalar = true
			default:
				s.scalar = true
			}
			s.keep(b[:1])
			b = b[1:]
			continue
		}
		if s.inString {
			if s.escape {
				s.escape = false
				s.keep(b[:1])
				b = b[1:]
				continue
			}
			// Bulk-skip string contents (base64 payloads are long strings).
			end, escaped := scanString(b)
			if end < 0 {
				s.keep(b)
				s.escape = escaped
				return
			}
			s.keep(b[:end+1])
			b = b[end+1:]
			s.inString = false
			if s.scalar && s.depth == 0 {
				s.finish(emit)
			}
			continue
		}
		if s.scalar && s.depth == 0 {
			// A bare number or keyword ends at whitespace or a structural byte.
			i := 0
			for i < len(b) && !bytes.ContainsRune([]byte(" \t\r\n{}[]\",:"), rune(b[i])) {
				i++
			}
			s.keep(b[:i])
			b = b[i:]
			if len(b) > 0 {
				s.finish(emit)
			}
			continue
		}
		// Inside an object or array: find the next structural byte.
		i := 0
		for i < len(b) {
			c := b[i]
			if c == '"' || c == '{' || c == '[' || c == '}' || c == ']' {
				break
			}
			i++
		}
		if i == len(b) {
			s.keep(b)
			return
		}
		c := b[i]
		s.keep(b[:i+1])
		b = b[i+1:]
		switch c {
		case '"':
			s.inString = true
		case '{', '[':
			s.depth++
		case '}', ']':
			s.depth--
			if s.depth == 0 {
				s.finish(emit)
			}
		}
	}
}

// scanString finds the end of a string's contents in b: the index of the
// closing quote, or -1 when b ends first, with escaped set when b ends
// inside an escape (its backslash is the last byte). Long runs without
// escapes are searched with bytes.IndexByte (base64 payloads); where
// escapes are dense it steps byte by byte, so a string of nothing but
// escapes costs a few nanoseconds a byte, not a search call each.
func scanString(b []byte) (end int, escaped bool) {
	i := 0
	for i < len(b) {
		j := indexStringEnd(b[i:])
		if j < 0 {
			return -1, false
		}
		i += j
		if b[i] == '"' {
			return i, false
		}
		i += 2 // the backslash and the byte it escapes
		for run := 0; run < 64 && i < len(b); run++ {
			switch b[i] {
			case '\\':
				i += 2
				run = 0
				continue
			case '"':
				return i, false
			}
			i++
		}
	}
	return -1, i > len(b)
}

// indexStringEnd returns the index of the first '"' or '\\' in b, or -1.
// It looks through windows that double in size, so the scan costs what lies
// before the byte found (plus a little), never the whole rest of b: looking
// for each byte over all of b at every escape or string start made 1 MiB of
// escapes cost seconds. Large windows keep bytes.IndexByte's vectorised
// speed on long base64 strings.
func indexStringEnd(b []byte) int {
	window := 64
	for start := 0; start < len(b); start += window {
		if start > 0 && window < 64<<10 {
			window *= 2
		}
		w := b[start:min(start+window, len(b))]
		q := bytes.IndexByte(w, '"')
		if q >= 0 {
			w = w[:q] // a backslash only counts before the quote
		}
		if bs := bytes.IndexByte(w, '\\'); bs >= 0 {
			return start + bs
		}
		if q >= 0 {
			return start + q
		}
	}
	return -1
}
