package wire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// Fuzz targets for argument decoding: what a host writes as a command's
// "arguments" reaches DecodeArgs in every command plugin, and SplitObject,
// StringValue and the strict base64 decoder in the parser.

// fuzzArgs has a field of every kind command arguments use: required and
// optional, pointers, slices, maps, raw JSON, a nested object and an
// alternate that validates itself.
type fuzzArgs struct {
	Handle  int64            `json:"handle"`
	Count   *int64           `json:"count"`
	Path    string           `json:"path,omitempty"`
	Mode    *string          `json:"mode"`
	Flag    bool             `json:"flag,omitempty"`
	Arg     []string         `json:"arg"`
	Env     json.RawMessage  `json:"env"`
	Opts    map[string]any   `json:"opts"`
	Ratio   float64          `json:"ratio,omitempty"`
	Small   uint8            `json:"small,omitempty"`
	Nested  *struct{ A int } `json:"nested"`
	Flex    FlexString       `json:"flex,omitempty"`
	private int
}

// qemuArgErrors are the texts DecodeArgs may answer with: qemu-ga's, and
// FlexString's own.
var qemuArgErrors = []*regexp.Regexp{
	regexp.MustCompile(`(?s)^Parameter '(.*)' is unexpected$`),
	regexp.MustCompile(`(?s)^Parameter '(.*)' is missing$`),
	regexp.MustCompile(`(?s)^Invalid parameter type for '(.*)', expected: (integer|number|string|boolean|array|object)$`),
	regexp.MustCompile(`(?s)^QMP input member 'arguments' must be an object$`),
	regexp.MustCompile(`(?s)^want a string or a number, got `),
}

// FuzzDecodeArgs: whatever the arguments, DecodeArgs never panics; it
// fails with a GenericError in qemu-ga's words naming a parameter that is
// (unexpected: is not) declared, or it decodes exactly what encoding/json
// decodes from the same document.
func FuzzDecodeArgs(f *testing.F) {
	for _, s := range []string{
		`{"handle":1000}`,
		`{"handle":1000,"count":65536}`,
		`{"handle":1,"path":"/bin/ls","arg":["-l","/"],"env":["A=b"],"mode":"r+","flag":true}`,
		`{"handle":1,"opts":{"a":[1,{"b":null}]},"ratio":-1.5e-3,"small":255,"nested":{"A":3},"flex":5}`,
		`{"handle":1,"flex":"5"}`,
		`{"handle":1,"flex":[]}`,
		`{"handle":"1000"}`,
		`{"handle":1.5}`,
		`{"handle":1e400}`,
		`{"handle":9223372036854775808}`,
		`{"handle":1,"small":256}`,
		`{"handle":null}`,
		`{"handle":1,"count":null,"mode":null}`,
		`{"Handle":1}`,
		`{"handle":1,"private":2}`,
		`{"handle":1,"arg":"not a list"}`,
		`{"handle":1,"arg":[1]}`,
		`{"handle":1,"handle":2}`,
		`{"handle":1,"path":"a","path":null}`,
		`{}`, ``, `null`, ` `, `[]`, `"x"`, `{"handle":1}x`, `{"handle":`,
		"{\"handle\":1,\"path\":\"\xff\"}",
		`{"handle":1,"path":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var got fuzzArgs
		err := DecodeArgs(raw, &got)
		if err != nil {
			var se *Error
			if !asSDKError(err, &se) || se.Class != ClassGenericError {
				t.Fatalf("%q: %T %v, want a GenericError", raw, err, err)
			}
			fields := structFields(reflect.TypeOf(got))
			matched := false
			for i, re := range qemuArgErrors {
				m := re.FindStringSubmatch(se.Desc)
				if m == nil {
					continue
				}
				matched = true
				if i > 2 {
					break
				}
				field, declared := fields[m[1]]
				switch {
				case i == 0 && declared:
					t.Fatalf("%q: %q, but it is declared", raw, se.Desc)
				case i > 0 && !declared:
					t.Fatalf("%q: %q, but it is not declared", raw, se.Desc)
				case i == 1 && !field.required:
					t.Fatalf("%q: %q, but it is optional", raw, se.Desc)
				}
			}
			if !matched {
				t.Fatalf("%q: %q is not one of qemu-ga's texts", raw, se.Desc)
			}
			return
		}
		if got.private != 0 {
			t.Fatalf("%q set an unexported field", raw)
		}
		// Accepted: encoding/json reads the same document the same way,
		// unless a key repeats (QEMU's parser refuses those before this).
		var want fuzzArgs
		trimmed := bytes.TrimSpace(raw)
		if len(trimmed) > 0 && string(trimmed) != "null" {
			if err := json.Unmarshal(trimmed, &want); err != nil {
				t.Fatalf("%q accepted, encoding/json says %v", raw, err)
			}
			if _, err := SplitObject(trimmed); err != nil && strings.Contains(err.Error(), "duplicate") {
				return
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q decoded as %+v, encoding/json %+v", raw, got, want)
		}
	})
}

// FuzzStringValue: for every member SplitObject finds, StringValue tells a
// string from any other value and returns what encoding/json decodes;
// on arbitrary bytes it never panics.
func FuzzStringValue(f *testing.F) {
	for _, s := range []string{
		`{"a":"plain","b":"esc\"aped\\\n\u00e9\ud83d\ude00","c":1,"d":null,"e":["x"],"f":{"g":"h"},"i":""}`,
		`{"buf-b64":"QUJD","x":"\u0000"}`,
		`{"lone":"\ud800","bad":"\udc00x"}`,
		"{\"utf8\":\"\xc3\xa9\xe2\x82\xac\"}",
		`"`, `"\`, `"a`, `""`, `"\u12"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		StringValue(in) // arbitrary bytes: no panic
		members, err := SplitObject(in)
		if err != nil {
			return
		}
		for _, m := range members {
			s, ok := StringValue(m.Value)
			var want string
			isString := json.Unmarshal(m.Value, &want) == nil && m.Value[0] == '"'
			if ok != isString || (ok && string(s) != want) {
				t.Fatalf("member %q = %s: StringValue %q %v, encoding/json %q %v", m.Key, m.Value, s, ok, want, isString)
			}
		}
	})
}
