package dialect

import (
	"encoding/json"
	"testing"
)

func TestAppendResult(t *testing.T) {
	for _, tc := range []struct {
		o    Outcome
		want string
	}{
		{Outcome{}, `{}`},
		{Outcome{Result: json.RawMessage(`[1,2]`)}, `[1,2]`},
		{Outcome{Result: json.RawMessage(`{"count":3,"eof":true}`), Blob: []byte("abc"), BlobField: "buf-b64"}, `{"buf-b64": "YWJj", "count":3,"eof":true}`},
		{Outcome{Result: json.RawMessage(`{ }`), Blob: []byte{}, BlobField: "buf-b64"}, `{"buf-b64": ""}`},
		{Outcome{Result: json.RawMessage(`{"count":3}`), Blob: []byte("abc"), BlobText: []byte("YWJj"), BlobField: "data"}, `{"data": "YWJj", "count":3}`},
		// No member to put it in, or not an object: the result as it is.
		{Outcome{Result: json.RawMessage(`{"count":3}`), Blob: []byte("abc")}, `{"count":3}`},
		{Outcome{Result: json.RawMessage(`"x"`), Blob: []byte("abc"), BlobField: "buf-b64"}, `"x"`},
	} {
		got := string(tc.o.AppendResult([]byte("<")))
		if got != "<"+tc.want {
			t.Errorf("%+v:\n got %s\nwant <%s", tc.o, got, tc.want)
		}
		if !json.Valid([]byte(got[1:])) {
			t.Errorf("%s is not JSON", got[1:])
		}
	}
}
