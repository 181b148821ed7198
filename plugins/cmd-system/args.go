package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// The SDK validates a command's top-level members; the members of list
// elements are validated here with the same texts, the path prefixed the way
// QEMU's input visitor names them: "Parameter 'vcpus[0].online' is missing".

// decodeObjectList decodes each element of a JSON array of objects into a
// new T with sdk.DecodeArgs.
func decodeObjectList[T any](name string, elems []json.RawMessage) ([]T, error) {
	out := make([]T, 0, len(elems))
	for i, raw := range elems {
		path := fmt.Sprintf("%s[%d]", name, i)
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || raw[0] != '{' {
			return nil, sdk.Errorf("Invalid parameter type for '%s', expected: object", path)
		}
		var v T
		if err := sdk.DecodeArgs(raw, &v); err != nil {
			return nil, prefixParam(err, path+".")
		}
		out = append(out, v)
	}
	return out, nil
}

// decodeStringList checks that every element of a JSON array is a string.
func decodeStringList(name string, elems []json.RawMessage) ([]string, error) {
	out := make([]string, 0, len(elems))
	for i, raw := range elems {
		var v string
		if err := json.Unmarshal(raw, &v); err != nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			return nil, sdk.Errorf("Invalid parameter type for '%s[%d]', expected: string", name, i)
		}
		out = append(out, v)
	}
	return out, nil
}

// prefixParam inserts prefix before the first quoted parameter name of an
// SDK validation error ("Parameter 'x' ...", "... for 'x', ...").
func prefixParam(err error, prefix string) error {
	var se *sdk.Error
	if !errors.As(err, &se) {
		return err
	}
	i := strings.IndexByte(se.Desc, '\'')
	if i < 0 {
		return err
	}
	return &sdk.Error{Class: se.Class, Desc: se.Desc[:i+1] + prefix + se.Desc[i+1:]}
}

// qapiUint64 decodes a QAPI 'uint64' the way QEMU's input visitor does: a
// negative integer is accepted and wraps around.
type qapiUint64 uint64

func (u *qapiUint64) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || (b[0] != '-' && (b[0] < '0' || b[0] > '9')) {
		return fmt.Errorf("not an integer: %s", b)
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	if v, err := n.Int64(); err == nil {
		*u = qapiUint64(v)
		return nil
	}
	var v uint64
	if _, err := fmt.Sscan(n.String(), &v); err != nil || strings.ContainsAny(n.String(), ".eE") {
		return fmt.Errorf("not an integer: %s", n)
	}
	*u = qapiUint64(v)
	return nil
}
