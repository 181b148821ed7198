package qga

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestBulkReply(t *testing.T) {
	big := strings.Repeat("A", bulkMin)
	for _, c := range []struct {
		line, id, ret string
		ok            bool
	}{
		// qemu-ga's spacing and ours.
		{`{"return": {"count": 3, "buf-b64": "` + big + `", "eof": false}, "id": "gc12"}` + "\n", "gc12", `{"count": 3, "buf-b64": "` + big + `", "eof": false}`, true},
		{`{"return":{"buf-b64":"` + big + `"},"id":"gc1"}`, "gc1", `{"buf-b64":"` + big + `"}`, true},
		// Not ours, or not this shape: left to encoding/json.
		{`{"return": "` + big + `", "id": 7}`, "", "", false},
		{`{"id": "gc1", "return": "` + big + `"}`, "", "", false},
		{`{"error": {"desc": "` + big + `"}, "id": "gc1"}`, "", "", false},
		{`{"return": "x", "id": "gc1"}`, "", "", false}, // small: the general path
	} {
		id, ret, ok := bulkReply([]byte(c.line))
		if ok != c.ok || id != c.id || string(ret) != c.ret {
			t.Errorf("%.60q: %q %.60q %v", c.line, id, ret, ok)
		}
		if ok && !json.Valid(ret) {
			t.Errorf("%.60q: return %.60q is not JSON", c.line, ret)
		}
	}
}
