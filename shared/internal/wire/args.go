package wire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
)

// DecodeArgs decodes a command's arguments object into v (a pointer to a
// struct) with qemu-ga's validation and error texts:
//
//   - a member not declared by the struct: "Parameter 'x' is unexpected"
//   - a required member absent: "Parameter 'x' is missing"
//   - a member of the wrong type: "Invalid parameter type for 'x', expected: integer"
//
// A field is optional when it is a pointer, a slice or a map, or its json tag
// has ",omitempty"; every other field is required. Fields whose type
// implements json.Unmarshaler (alternates such as "bool or enum") validate
// themselves and should return an *Error.
func DecodeArgs(raw []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return Errorf("internal error: DecodeArgs needs a pointer to a struct")
	}
	fields := structFields(rv.Elem().Type())
	raw = bytes.TrimSpace(raw)
	members := map[string]json.RawMessage{}
	if len(raw) > 0 && !bytes.Equal(raw, []byte("null")) {
		if err := json.Unmarshal(raw, &members); err != nil {
			return Errorf("QMP input member 'arguments' must be an object")
		}
	}
	for name := range members {
		if _, ok := fields[name]; !ok {
			return Errorf("Parameter '%s' is unexpected", name)
		}
	}
	for name, f := range fields {
		m, ok := members[name]
		if !ok || bytes.Equal(m, []byte("null")) {
			if f.required {
				return Errorf("Parameter '%s' is missing", name)
			}
			continue
		}
		dst := rv.Elem().FieldByIndex(f.index)
		if err := json.Unmarshal(m, dst.Addr().Interface()); err != nil {
			var se *Error
			if asSDKError(err, &se) {
				return se
			}
			return Errorf("Invalid parameter type for '%s', expected: %s", name, expectedName(f.typ))
		}
	}
	return nil
}

func asSDKError(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}

type fieldInfo struct {
	index    []int
	required bool
	typ      reflect.Type
}

var fieldCache sync.Map // reflect.Type → map[string]fieldInfo; immutable per type

func structFields(t reflect.Type) map[string]fieldInfo {
	if c, ok := fieldCache.Load(t); ok {
		return c.(map[string]fieldInfo)
	}
	out := map[string]fieldInfo{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = sf.Name
		}
		optional := strings.Contains(opts, "omitempty")
		switch sf.Type.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map:
			optional = true
		}
		out[name] = fieldInfo{index: sf.Index, required: !optional, typ: sf.Type}
	}
	fieldCache.Store(t, out)
	return out
}

func expectedName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.String:
		return "string"
	case reflect.Slice, reflect.Array:
		return "array"
	default:
		return "object"
	}
}

// FlexString is an option that accepts a JSON string or number: HCL writes
// `domid = 5` as a number where a plugin wants text.
type FlexString string

// UnmarshalJSON accepts "5" and 5 alike.
func (f *FlexString) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*f = FlexString(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return Errorf("want a string or a number, got %s", b)
	}
	*f = FlexString(n.String())
	return nil
}
