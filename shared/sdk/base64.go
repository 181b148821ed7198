package sdk

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"runtime"
	"sync"
)

// parallelBase64Min is the size from which bulk base64 work is split across
// the cores: a host waits for a 1 MiB file read or write while one core
// spends about 0.6 ms on the conversion and the others idle.
const parallelBase64Min = 256 << 10

// parts tells in how many pieces to convert n bytes.
func parts(n int) int {
	if n < parallelBase64Min {
		return 1
	}
	return min(runtime.GOMAXPROCS(0), 4, n/(parallelBase64Min/2))
}

// encodePairs maps 12 bits of input to their two base64 characters, first
// character in the low byte: six input bytes become eight characters with
// four lookups and one store.
var encodePairs = func() (t [4096]uint16) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		t[i] = uint16(alphabet[i>>6]) | uint16(alphabet[i&63])<<8
	}
	return t
}()

// encodeBase64 is base64.StdEncoding.Encode at about twice its speed: the
// read-ahead of file data encodes megabytes a second with it.
func encodeBase64(dst, src []byte) {
	si, di := 0, 0
	for ; si+14 <= len(src) && di+16 <= len(dst); si, di = si+12, di+16 {
		v := binary.BigEndian.Uint64(src[si : si+8])
		w := binary.BigEndian.Uint64(src[si+6 : si+14])
		binary.LittleEndian.PutUint64(dst[di:di+8], uint64(encodePairs[v>>52&0xfff])|
			uint64(encodePairs[v>>40&0xfff])<<16|
			uint64(encodePairs[v>>28&0xfff])<<32|
			uint64(encodePairs[v>>16&0xfff])<<48)
		binary.LittleEndian.PutUint64(dst[di+8:di+16], uint64(encodePairs[w>>52&0xfff])|
			uint64(encodePairs[w>>40&0xfff])<<16|
			uint64(encodePairs[w>>28&0xfff])<<32|
			uint64(encodePairs[w>>16&0xfff])<<48)
	}
	// si is a multiple of 3, so the rest encodes on its own.
	base64.StdEncoding.Encode(dst[di:], src[si:])
}

// EncodeBase64 writes the standard (padded) base64 encoding of src to dst,
// which must hold base64.StdEncoding.EncodedLen(len(src)) bytes.
func EncodeBase64(dst, src []byte) {
	k := parts(len(src))
	if k <= 1 {
		encodeBase64(dst, src)
		return
	}
	// Cut src at multiples of 3 bytes, so every piece but the last encodes
	// without padding and the pieces line up in dst.
	step := (len(src)/k + 2) / 3 * 3
	var wg sync.WaitGroup
	for off := 0; off < len(src); off += step {
		end := min(off+step, len(src))
		wg.Add(1)
		go func(src, dst []byte) {
			defer wg.Done()
			encodeBase64(dst, src)
		}(src[off:end], dst[off/3*4:base64.StdEncoding.EncodedLen(end)])
	}
	wg.Wait()
}

// decodePairs maps two base64 characters (the first in the low byte) to
// their 12 bits, or to 0xffff when either is not in the alphabet ('=' and
// line breaks included: those take the slow path).
var decodePairs = func() *[1 << 16]uint16 {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	var value [256]int
	for i := range value {
		value[i] = -1
	}
	for i := 0; i < len(alphabet); i++ {
		value[alphabet[i]] = i
	}
	t := new([1 << 16]uint16)
	for i := range t {
		a, b := value[i&0xff], value[i>>8]
		if a < 0 || b < 0 {
			t[i] = 0xffff
		} else {
			t[i] = uint16(a<<6 | b)
		}
	}
	return t
}()

// decodeBase64Strict is base64.StdEncoding.Strict().Decode at about twice
// its speed on clean input; at the first character it does not take (padding,
// a line break, an invalid one) it hands the rest to encoding/base64, so
// results and errors are the same.
func decodeBase64Strict(dst, text []byte) (int, error) {
	si, di := 0, 0
	for ; si+8 <= len(text) && di+8 <= len(dst); si, di = si+8, di+6 {
		x := binary.LittleEndian.Uint64(text[si : si+8])
		a, b := decodePairs[x&0xffff], decodePairs[x>>16&0xffff]
		c, d := decodePairs[x>>32&0xffff], decodePairs[x>>48]
		if (a|b|c|d)&0x8000 != 0 {
			break
		}
		binary.BigEndian.PutUint64(dst[di:di+8], (uint64(a)<<36|uint64(b)<<24|uint64(c)<<12|uint64(d))<<16)
	}
	n, err := base64.StdEncoding.Strict().Decode(dst[di:], text[si:])
	if err != nil {
		if ce, ok := err.(base64.CorruptInputError); ok {
			return di + n, base64.CorruptInputError(int64(si) + int64(ce))
		}
		return di + n, err
	}
	return di + n, nil
}

// DecodeBase64Strict decodes standard base64 text into dst (at least
// base64.StdEncoding.DecodedLen(len(text)) bytes) and returns the length.
// Padding bits must be zero, as QEMU's qbase64_decode requires.
func DecodeBase64Strict(dst, text []byte) (int, error) {
	k := parts(len(text))
	// Go's decoder skips line breaks, which would shift the pieces; text
	// with any is decoded in one piece.
	if k <= 1 || len(text)%4 != 0 || bytes.IndexByte(text, '\n') >= 0 || bytes.IndexByte(text, '\r') >= 0 {
		return decodeBase64Strict(dst, text)
	}
	step := (len(text)/k + 3) / 4 * 4
	type piece struct {
		n   int
		err error
	}
	results := make([]piece, (len(text)+step-1)/step)
	var wg sync.WaitGroup
	for i := range results {
		off := i * step
		end := min(off+step, len(text))
		wg.Add(1)
		// dst is bounded per piece: the decoder stores eight bytes at a
		// time and would otherwise write into the next piece's output.
		go func(p *piece, text, dst []byte) {
			defer wg.Done()
			p.n, p.err = decodeBase64Strict(dst, text)
		}(&results[i], text[off:end], dst[off/4*3:min(end/4*3, len(dst))])
	}
	wg.Wait()
	n := 0
	for i, p := range results {
		if p.err != nil {
			return 0, p.err
		}
		// Only the last piece may end in padding; a short earlier piece
		// means padding in the middle of the text.
		if i < len(results)-1 && p.n != step/4*3 {
			return 0, base64.CorruptInputError(i * step)
		}
		n += p.n
	}
	return n, nil
}
