package main

import "testing"

func TestDecodeRead(t *testing.T) {
	for _, c := range []struct {
		ret, data string
		eof, ok   bool
	}{
		{`{"count": 3, "buf-b64": "YWJj", "eof": false}`, "abc", false, true},
		{`{"count":3,"buf-b64":"YWJj","eof":true}`, "abc", true, true},
		{`{"count": 0, "buf-b64": "", "eof": true}`, "", true, true},
		{`{"count": 3, "buf-b64": "YW\/j", "eof": false}`, "ao\xe3", false, true}, // an escaped '/'
		{`{"count": 4, "buf-b64": "YWJj", "eof": false}`, "", false, false},       // count disagrees
		{`{"count": 3, "buf-b64": "Y!Jj", "eof": false}`, "", false, false},
		{`{"count": 3}`, "", false, false},
	} {
		r, err := decodeRead([]byte(c.ret))
		if (err == nil) != c.ok || (c.ok && (string(r.data) != c.data || r.EOF != c.eof)) {
			t.Errorf("%s: %q eof=%v err=%v", c.ret, r.data, r.EOF, err)
		}
	}
}
