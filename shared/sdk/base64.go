package sdk

import (
	"bytes"
	"encoding/base64"
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

// EncodeBase64 writes the standard (padded) base64 encoding of src to dst,
// which must hold base64.StdEncoding.EncodedLen(len(src)) bytes.
func EncodeBase64(dst, src []byte) {
	k := parts(len(src))
	if k <= 1 {
		base64.StdEncoding.Encode(dst, src)
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
			base64.StdEncoding.Encode(dst, src)
		}(src[off:end], dst[off/3*4:base64.StdEncoding.EncodedLen(end)])
	}
	wg.Wait()
}

// DecodeBase64Strict decodes standard base64 text into dst (at least
// base64.StdEncoding.DecodedLen(len(text)) bytes) and returns the length.
// Padding bits must be zero, as QEMU's qbase64_decode requires.
func DecodeBase64Strict(dst, text []byte) (int, error) {
	k := parts(len(text))
	// Go's decoder skips line breaks, which would shift the pieces; text
	// with any is decoded in one piece.
	if k <= 1 || len(text)%4 != 0 || bytes.IndexByte(text, '\n') >= 0 || bytes.IndexByte(text, '\r') >= 0 {
		return base64.StdEncoding.Strict().Decode(dst, text)
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
			p.n, p.err = base64.StdEncoding.Strict().Decode(dst, text)
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
