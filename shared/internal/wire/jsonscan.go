package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Member is one member of a JSON object, its value as raw JSON.
type Member struct {
	Key   string
	Value []byte // a slice of the input
}

// SplitObject splits a JSON object into its members without decoding the
// values, validating the whole document as it goes (strings, escapes,
// numbers, literals, nesting) and refusing duplicate keys, as QEMU's parser
// does. It exists for speed: a guest-file-write carries megabytes of base64
// in one string, which encoding/json scans at a fraction of the rate of the
// bulk byte search used here.
func SplitObject(b []byte) ([]Member, error) {
	s := scanner{b: b}
	s.ws()
	if s.i >= len(b) || b[s.i] != '{' {
		return nil, errors.New("expected an object")
	}
	s.i++
	var members []Member
	s.ws()
	if s.peek() == '}' {
		s.i++
	} else {
		for {
			s.ws()
			start := s.i
			if err := s.str(); err != nil {
				return nil, err
			}
			var key string
			raw := b[start:s.i]
			if bytes.IndexByte(raw, '\\') < 0 {
				key = string(raw[1 : len(raw)-1])
			} else if err := json.Unmarshal(raw, &key); err != nil {
				return nil, fmt.Errorf("invalid key: %w", err)
			}
			for _, m := range members {
				if m.Key == key {
					return nil, errors.New("duplicate key")
				}
			}
			s.ws()
			if s.peek() != ':' {
				return nil, s.unexpected("':'")
			}
			s.i++
			s.ws()
			vstart := s.i
			if err := s.value(0); err != nil {
				return nil, err
			}
			members = append(members, Member{Key: key, Value: b[vstart:s.i]})
			s.ws()
			c := s.peek()
			s.i++
			if c == '}' {
				break
			}
			if c != ',' {
				s.i--
				return nil, s.unexpected("',' or '}'")
			}
		}
	}
	s.ws()
	if s.i != len(b) {
		return nil, errors.New("trailing data after the object")
	}
	return members, nil
}

// StringValue returns the contents of a raw JSON string; ok is false when v
// is not a string. Strings without escapes are returned without copying.
func StringValue(v []byte) (s []byte, ok bool) {
	if len(v) < 2 || v[0] != '"' {
		return nil, false
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1], true
	}
	var out string
	if json.Unmarshal(v, &out) != nil {
		return nil, false
	}
	return []byte(out), true
}

const maxNesting = 1024 // QEMU's parser limit

type scanner struct {
	b []byte
	i int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) unexpected(want string) error {
	if s.i >= len(s.b) {
		return fmt.Errorf("unexpected end of input, expected %s", want)
	}
	return fmt.Errorf("invalid character %q at offset %d, expected %s", s.b[s.i], s.i, want)
}

// needsCheck marks the bytes a string scan must stop at.
var needsCheck = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	for c := 0x80; c < 0x100; c++ {
		t[c] = true // validated as UTF-8 by the caller's bulk check
	}
	return t
}()

// str scans a string starting at s.i ('"').
func (s *scanner) str() error {
	if s.peek() != '"' {
		return s.unexpected("a string")
	}
	s.i++
	for {
		// Bulk path: most payload bytes need no attention.
		j := skipPlain(s.b, s.i)
		s.i = j
		if j >= len(s.b) {
			return errors.New("unexpected end of input in a string")
		}
		c := s.b[j]
		switch {
		case c == '"':
			s.i++
			return nil
		case c == '\\':
			if j+1 >= len(s.b) {
				return errors.New("unexpected end of input in a string")
			}
			switch s.b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i = j + 2
			case 'u':
				if j+6 > len(s.b) {
					return errors.New("unexpected end of input in a string")
				}
				for _, h := range s.b[j+2 : j+6] {
					if !isHex(h) {
						return fmt.Errorf("invalid escape at offset %d", j)
					}
				}
				s.i = j + 6
			default:
				return fmt.Errorf("invalid escape '\\%c' at offset %d", s.b[j+1], j)
			}
		case c < 0x20:
			return fmt.Errorf("control character 0x%02x in a string at offset %d", c, j)
		default: // non-ASCII: one valid UTF-8 sequence
			r, size := utf8.DecodeRune(s.b[j:])
			if r == utf8.RuneError && size <= 1 {
				return errors.New("invalid UTF-8 sequence in string")
			}
			s.i = j + size
		}
	}
}

// skipPlain returns the index of the first byte at or after i that a string
// scan must look at (see needsCheck), or len(b). It tests eight bytes per
// step: a megabyte of base64 in a guest-file-write crosses this loop twice.
func skipPlain(b []byte, i int) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for ; i+8 <= len(b); i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		if w&highs != 0 {
			break // non-ASCII: validated byte by byte
		}
		// With every high bit clear, a byte below 0x20 borrows into its
		// own high bit, and so does a byte that XOR turned into zero.
		quote := w ^ (ones * '"')
		backslash := w ^ (ones * '\\')
		if ((w-ones*0x20)|(quote-ones)&^quote|(backslash-ones)&^backslash)&highs != 0 {
			break
		}
	}
	for i < len(b) && !needsCheck[b[i]] {
		i++
	}
	return i
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func (s *scanner) value(depth int) error {
	if depth > maxNesting {
		return errors.New("nesting too deep")
	}
	switch c := s.peek(); {
	case c == '"':
		return s.str()
	case c == '{' || c == '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		s.i++
		s.ws()
		if s.peek() == closer {
			s.i++
			return nil
		}
		for {
			s.ws()
			if c == '{' {
				if err := s.str(); err != nil {
					return err
				}
				s.ws()
				if s.peek() != ':' {
					return s.unexpected("':'")
				}
				s.i++
				s.ws()
			}
			if err := s.value(depth + 1); err != nil {
				return err
			}
			s.ws()
			n := s.peek()
			if n == closer {
				s.i++
				return nil
			}
			if n != ',' {
				return s.unexpected(fmt.Sprintf("',' or '%c'", closer))
			}
			s.i++
		}
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	default:
		return s.unexpected("a value")
	}
}

func (s *scanner) literal(word string) error {
	if !bytes.HasPrefix(s.b[s.i:], []byte(word)) {
		return fmt.Errorf("invalid keyword at offset %d", s.i)
	}
	s.i += len(word)
	return nil
}

func (s *scanner) number() error {
	start := s.i
	if s.peek() == '-' {
		s.i++
	}
	digits := func() int {
		n := 0
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	if s.peek() == '0' {
		s.i++
	} else if digits() == 0 {
		return fmt.Errorf("invalid number at offset %d", start)
	}
	if s.peek() == '.' {
		s.i++
		if digits() == 0 {
			return fmt.Errorf("invalid number at offset %d", start)
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if digits() == 0 {
			return fmt.Errorf("invalid number at offset %d", start)
		}
	}
	return nil
}
