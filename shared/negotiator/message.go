package negotiator

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Request is one call.
type Request struct {
	Method string
	Args   []json.RawMessage
	Kw     map[string]json.RawMessage
}

// wireRequest takes both spellings: negotiator 0.12.2's method/args/kw and
// the seed document's command/arguments/keyword-arguments.
type wireRequest struct {
	Method  json.RawMessage            `json:"method"`
	Command json.RawMessage            `json:"command"`
	Args    []json.RawMessage          `json:"args"`
	Argus   []json.RawMessage          `json:"arguments"`
	Kw      map[string]json.RawMessage `json:"kw"`
	KwLong  map[string]json.RawMessage `json:"keyword-arguments"`
}

// DecodeRequest decodes one request body. Missing args and kw are empty;
// a method that is absent, null or not a string is an error.
func DecodeRequest(body []byte) (Request, error) {
	if !utf8.Valid(body) {
		return Request{}, errors.New("invalid request: not UTF-8")
	}
	var w wireRequest
	// Unmarshal refuses data after the value too.
	if err := json.Unmarshal(body, &w); err != nil {
		return Request{}, fmt.Errorf("invalid request: %w", err)
	}
	name := w.Method
	if isNull(name) {
		name = w.Command
	}
	if isNull(name) {
		return Request{}, errors.New("invalid request: no method given")
	}
	var req Request
	if err := json.Unmarshal(name, &req.Method); err != nil {
		return Request{}, fmt.Errorf("invalid request: the method is not a string: %s", name)
	}
	req.Args, req.Kw = w.Args, w.Kw
	if req.Args == nil {
		req.Args = w.Argus
	}
	if req.Kw == nil {
		req.Kw = w.KwLong
	}
	return req, nil
}

func isNull(v json.RawMessage) bool {
	return len(v) == 0 || string(v) == "null"
}

// EncodeRequest encodes a call with negotiator 0.12.2's keys.
func EncodeRequest(method string, args []any, kw map[string]any) ([]byte, error) {
	if args == nil {
		args = []any{}
	}
	if kw == nil {
		kw = map[string]any{}
	}
	return marshalASCII(struct {
		Method string         `json:"method"`
		Args   []any          `json:"args"`
		Kw     map[string]any `json:"kw"`
	}{method, args, kw})
}

// Reply is one answer.
type Reply struct {
	Success bool            `json:"success"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   string          `json:"error,omitempty"`
}

// EncodeResult encodes a successful reply.
func EncodeResult(v any) ([]byte, error) {
	return marshalASCII(struct {
		Success bool `json:"success"`
		Result  any  `json:"result"`
	}{true, v})
}

// EncodeError encodes a failed reply.
func EncodeError(msg string) []byte {
	b, err := marshalASCII(struct {
		Success bool   `json:"success"`
		Error   string `json:"error"`
	}{false, msg})
	if err != nil {
		// A string always encodes; keep the reply well-formed regardless.
		return []byte(`{"success": false, "error": "internal error"}`)
	}
	return b
}

// DecodeReply decodes one reply body.
func DecodeReply(body []byte) (Reply, error) {
	var raw struct {
		Success *bool           `json:"success"`
		Result  json.RawMessage `json:"result"`
		Error   json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return Reply{}, fmt.Errorf("invalid reply: %w", err)
	}
	if raw.Success == nil {
		return Reply{}, errors.New("invalid reply: no success member")
	}
	r := Reply{Success: *raw.Success, Result: raw.Result}
	if !r.Success {
		if json.Unmarshal(raw.Error, &r.Error) != nil {
			r.Error = string(raw.Error)
		}
	}
	return r, nil
}

// marshalASCII encodes v as JSON with every non-ASCII character escaped, so
// that a peer counting characters (the original, in Python) and one
// counting bytes agree on the frame's length.
func marshalASCII(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return EscapeNonASCII(b), nil
}

// EscapeNonASCII rewrites every non-ASCII character of a JSON text as a
// \uXXXX escape (a surrogate pair above U+FFFF). In JSON such characters
// can only occur inside strings, where the escape means the same. Invalid
// UTF-8 becomes U+FFFD.
func EscapeNonASCII(b []byte) []byte {
	i := 0
	for i < len(b) && b[i] < utf8.RuneSelf {
		i++
	}
	if i == len(b) {
		return b
	}
	const hex = "0123456789abcdef"
	out := make([]byte, i, len(b)+len(b)/2)
	copy(out, b[:i])
	esc := func(r rune) {
		out = append(out, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
	}
	for i < len(b) {
		c := b[i]
		if c < utf8.RuneSelf {
			out = append(out, c)
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		i += size
		if r > 0xffff {
			r -= 0x10000
			esc(0xd800 + (r>>10)&0x3ff)
			esc(0xdc00 + r&0x3ff)
			continue
		}
		esc(r)
	}
	return out
}
