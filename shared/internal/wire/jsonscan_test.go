package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestSplitObject(t *testing.T) {
	m, err := SplitObject([]byte(` {"execute" : "x", "arguments":{"a":[1,-2.5e3,true,null,{"b":"\u00e9\n"}]}, "id":"k\"ey"} `))
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 3 || m[0].Key != "execute" || string(m[1].Value) != `{"a":[1,-2.5e3,true,null,{"b":"\u00e9\n"}]}` || string(m[2].Value) != `"k\"ey"` {
		t.Fatalf("%+v", m)
	}
	for _, bad := range []string{`{"a":1,"a":2}`, `{"a":01}`, `{"a":"\x"}`, `{"a":tru}`, `{"a":1}x`, `{"a" 1}`, `{"a":[1,]}`, "{\"a\":\"\x01\"}", "{\"a\":\"\xff\"}", `{"a":"unterminated}`, `[1]`, `{"a":1,}`} {
		if _, err := SplitObject([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzSplitObject: SplitObject accepts exactly the objects encoding/json
// accepts (duplicate keys aside), and returns the same members.
func FuzzSplitObject(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":"\u0041","b":[{}]}`, `{"x":1e5,"y":-0.5}`, `{"":null}`, "{\"a\":\"\xc3\xa9\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		members, err := SplitObject(in)
		var ref map[string]json.RawMessage
		refErr := json.Unmarshal(in, &ref)
		if refErr == nil && ref == nil {
			refErr = errors.New("null is not an object") // encoding/json takes null for an empty map
		}
		if err == nil {
			if refErr != nil {
				t.Fatalf("accepted %q, encoding/json says %v", in, refErr)
			}
			if len(members) != len(ref) {
				t.Fatalf("%q: %d members, encoding/json %d", in, len(members), len(ref))
			}
			for _, m := range members {
				if !json.Valid(m.Value) || strings.TrimSpace(string(ref[m.Key])) != strings.TrimSpace(string(m.Value)) {
					t.Fatalf("%q: member %q = %q, want %q", in, m.Key, m.Value, ref[m.Key])
				}
			}
		} else if refErr == nil && !strings.Contains(err.Error(), "duplicate") && !strings.Contains(err.Error(), "UTF-8") && !strings.Contains(err.Error(), "nesting") {
			// encoding/json replaces invalid UTF-8; QEMU refuses it, so do we.
			t.Fatalf("refused %q (%v), encoding/json accepts it", in, err)
		}
	})
}

func BenchmarkSplitObjectWrite(b *testing.B) {
	req := []byte(`{"handle":1000,"buf-b64":"` + strings.Repeat("QUJD", 350000) + `"}`)
	b.SetBytes(int64(len(req)))
	for i := 0; i < b.N; i++ {
		if _, err := SplitObject(req); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSkipPlain puts every byte value at every offset of a word and beyond,
// so no byte the scan must stop at slips through the eight-byte steps.
func TestSkipPlain(t *testing.T) {
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 24; pos++ {
			for start := 0; start <= pos; start += 3 {
				b := []byte(strings.Repeat("A", 24))
				b[pos] = byte(c)
				want := len(b)
				if needsCheck[c] {
					want = pos
				}
				if got := skipPlain(b, start); got != want {
					t.Fatalf("byte 0x%02x at %d, scan from %d: stopped at %d, want %d", c, pos, start, got, want)
				}
			}
		}
	}
}
