package wire

import (
	"bytes"
	"encoding/base64"
	"math/rand"
	"testing"
)

// The conversions give exactly what encoding/base64 gives, at lengths around
// their eight-byte steps and large ones, and refuse what it refuses.
func TestBase64(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, n := range []int{0, 1, 2, 3, 255, 256, 257, 258, 1 << 20, 3<<20 + 7} {
		src := make([]byte, n)
		rng.Read(src)
		want := base64.StdEncoding.EncodeToString(src)
		got := make([]byte, base64.StdEncoding.EncodedLen(n))
		EncodeBase64(got, src)
		if string(got) != want {
			t.Fatalf("encode %d bytes differs", n)
		}
		back := make([]byte, base64.StdEncoding.DecodedLen(len(got)))
		m, err := DecodeBase64Strict(back, got)
		if err != nil || !bytes.Equal(back[:m], src) {
			t.Fatalf("decode %d bytes: %v", n, err)
		}
	}
	big := []byte(base64.StdEncoding.EncodeToString(make([]byte, 1<<20)))
	for name, bad := range map[string][]byte{
		"padding in the middle": append(append(append([]byte(nil), big[:len(big)/2]...), "AA=="...), big[len(big)/2+4:]...),
		"invalid character":     append(append(append([]byte(nil), big[:len(big)-9]...), '*'), big[len(big)-8:]...),
		"non-zero padding bits": append(append([]byte(nil), big[:len(big)-4]...), "AB=="...),
	} {
		out := make([]byte, len(bad))
		if _, err := DecodeBase64Strict(out, bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func BenchmarkEncodeBase64(b *testing.B) {
	src := make([]byte, 1<<20)
	dst := make([]byte, base64.StdEncoding.EncodedLen(len(src)))
	b.SetBytes(int64(len(src)))
	for i := 0; i < b.N; i++ {
		EncodeBase64(dst, src)
	}
}

func BenchmarkDecodeBase64Strict(b *testing.B) {
	text := []byte(base64.StdEncoding.EncodeToString(make([]byte, 1<<20)))
	dst := make([]byte, len(text))
	b.SetBytes(1 << 20)
	for i := 0; i < b.N; i++ {
		if _, err := DecodeBase64Strict(dst, text); err != nil {
			b.Fatal(err)
		}
	}
}

func TestEncodeBase64Small(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	for n := 0; n < 200; n++ {
		src := make([]byte, n)
		rng.Read(src)
		got := make([]byte, base64.StdEncoding.EncodedLen(n))
		EncodeBase64(got, src)
		if want := base64.StdEncoding.EncodeToString(src); string(got) != want {
			t.Fatalf("%d bytes: %q, want %q", n, got, want)
		}
	}
}

// The fast decoder agrees with encoding/base64 on every input, valid or not.
func FuzzDecodeBase64Strict(f *testing.F) {
	for _, s := range []string{"", "QUJD", "QUJDRA==", "QUJDREVGR0g=", "QUJD\nREVG", "QU=D", "QUJDREVGR0hJ*", "QUJDREVGR0hJSktM"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		want := make([]byte, base64.StdEncoding.DecodedLen(len(text))+8)
		got := make([]byte, len(want))
		wn, werr := base64.StdEncoding.Strict().Decode(want, text)
		gn, gerr := DecodeBase64Strict(got, text)
		if (werr == nil) != (gerr == nil) || (werr == nil && !bytes.Equal(want[:wn], got[:gn])) {
			t.Fatalf("%q: got %d %v, encoding/base64 %d %v", text, gn, gerr, wn, werr)
		}
	})
}
