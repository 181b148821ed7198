package main

// SHA-crypt ($5$ SHA-256, $6$ SHA-512), written from Ulrich Drepper's
// specification "Unix crypt using SHA-256 and SHA-512" (the algorithm of
// glibc's crypt(3)); golang.org/x/crypto has none.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

const (
	shaCryptSaltMax       = 16
	shaCryptRoundsDefault = 5000
	shaCryptRoundsMin     = 1000
	shaCryptRoundsMax     = 999999999
	cryptAlphabet         = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// shaCryptScheme is one of the two variants.
type shaCryptScheme struct {
	id    string // "5" or "6"
	new   func() hash.Hash
	order [][3]int // byte triplets of the final encoding
	tail  []int    // the last one or two bytes
}

var (
	sha256Crypt = &shaCryptScheme{
		id:  "5",
		new: sha256.New,
		order: [][3]int{{0, 10, 20}, {21, 1, 11}, {12, 22, 2}, {3, 13, 23}, {24, 4, 14},
			{15, 25, 5}, {6, 16, 26}, {27, 7, 17}, {18, 28, 8}, {9, 19, 29}},
		tail: []int{31, 30},
	}
	sha512Crypt = &shaCryptScheme{
		id:  "6",
		new: sha512.New,
		order: [][3]int{{0, 21, 42}, {22, 43, 1}, {44, 2, 23}, {3, 24, 45}, {25, 46, 4},
			{47, 5, 26}, {6, 27, 48}, {28, 49, 7}, {50, 8, 29}, {9, 30, 51}, {31, 52, 10},
			{53, 11, 32}, {12, 33, 54}, {34, 55, 13}, {56, 14, 35}, {15, 36, 57}, {37, 58, 16},
			{59, 17, 38}, {18, 39, 60}, {40, 61, 19}, {62, 20, 41}},
		tail: []int{63},
	}
)

// shaCrypt hashes password with a setting such as "$6$salt",
// "$6$rounds=10000$salt" or a whole hash (whose setting is reused), as
// crypt(3) does.
func shaCrypt(password []byte, setting string) (string, error) {
	var s *shaCryptScheme
	switch {
	case strings.HasPrefix(setting, "$5$"):
		s = sha256Crypt
	case strings.HasPrefix(setting, "$6$"):
		s = sha512Crypt
	default:
		return "", fmt.Errorf("sha-crypt: setting %q is neither $5$ nor $6$", setting)
	}
	rest := setting[3:]
	rounds, explicit := shaCryptRoundsDefault, false
	if r, ok := strings.CutPrefix(rest, "rounds="); ok {
		num, after, found := strings.Cut(r, "$")
		if !found {
			return "", fmt.Errorf("sha-crypt: setting %q: rounds without salt", setting)
		}
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			return "", fmt.Errorf("sha-crypt: setting %q: bad rounds: %w", setting, err)
		}
		rounds = int(min(max(n, shaCryptRoundsMin), shaCryptRoundsMax))
		explicit = true
		rest = after
	}
	salt, _, _ := strings.Cut(rest, "$")
	if len(salt) > shaCryptSaltMax {
		salt = salt[:shaCryptSaltMax]
	}
	return s.hash(password, []byte(salt), rounds, explicit), nil
}

func (s *shaCryptScheme) hash(p, salt []byte, rounds int, explicit bool) string {
	h := s.new()
	size := h.Size()
	repeat := func(h hash.Hash, seq []byte, n int) {
		for ; n > size; n -= size {
			h.Write(seq)
		}
		h.Write(seq[:n])
	}

	// Digest B: password, salt, password.
	h.Write(p)
	h.Write(salt)
	h.Write(p)
	b := h.Sum(nil)

	// Digest A.
	h.Reset()
	h.Write(p)
	h.Write(salt)
	repeat(h, b, len(p))
	for n := len(p); n > 0; n >>= 1 {
		if n&1 != 0 {
			h.Write(b)
		} else {
			h.Write(p)
		}
	}
	a := h.Sum(nil)

	// P sequence: digest DP of the password repeated len(p) times.
	h.Reset()
	for range len(p) {
		h.Write(p)
	}
	dp := h.Sum(nil)
	pseq := make([]byte, 0, len(p))
	for len(pseq) < len(p) {
		pseq = append(pseq, dp[:min(size, len(p)-len(pseq))]...)
	}

	// S sequence: digest DS of the salt repeated 16+A[0] times.
	h.Reset()
	for range 16 + int(a[0]) {
		h.Write(salt)
	}
	ds := h.Sum(nil)
	sseq := ds[:len(salt)]

	c := a
	for i := range rounds {
		h.Reset()
		if i&1 != 0 {
			h.Write(pseq)
		} else {
			h.Write(c)
		}
		if i%3 != 0 {
			h.Write(sseq)
		}
		if i%7 != 0 {
			h.Write(pseq)
		}
		if i&1 != 0 {
			h.Write(c)
		} else {
			h.Write(pseq)
		}
		c = h.Sum(c[:0])
	}
	clear(pseq)
	clear(dp)

	var out strings.Builder
	out.WriteString("$" + s.id + "$")
	if explicit {
		out.WriteString("rounds=" + strconv.Itoa(rounds) + "$")
	}
	out.Write(salt)
	out.WriteByte('$')
	enc := func(b2, b1, b0 byte, n int) {
		w := uint(b2)<<16 | uint(b1)<<8 | uint(b0)
		for range n {
			out.WriteByte(cryptAlphabet[w&0x3f])
			w >>= 6
		}
	}
	for _, t := range s.order {
		enc(c[t[0]], c[t[1]], c[t[2]], 4)
	}
	if len(s.tail) == 2 {
		enc(0, c[s.tail[0]], c[s.tail[1]], 3)
	} else {
		enc(0, 0, c[s.tail[0]], 2)
	}
	return out.String()
}

// newSalt returns a random salt of n characters of crypt's alphabet.
func newSalt(n int) (string, error) {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	for i, c := range buf {
		buf[i] = cryptAlphabet[int(c)%len(cryptAlphabet)]
	}
	return string(buf), nil
}
