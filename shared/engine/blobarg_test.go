package engine

import (
	"encoding/json"
	"testing"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// The arguments left after the bulk member is taken out are still JSON
// whatever the other keys hold: they were quoted the Go way (\x01, \a),
// which is not JSON, so the plugin answered "'arguments' must be an object"
// instead of naming the unexpected parameter. Found by FuzzExtractBlobArg.
func TestExtractBlobArgQuotesKeysAsJSON(t *testing.T) {
	for _, args := range []string{
		`{"handle":1000,"buf-b64":"QUJD","\u0001":1}`,
		`{"handle":1000,"buf-b64":"QUJD","\u0007\u007f\u2028<>&\"\\":{"a":[1]}}`,
	} {
		req := &pb.RunRequest{ArgsJson: []byte(args)}
		if o := extractBlobArg(req, "buf-b64", &dataplane.BufferPool{}); o != nil {
			t.Fatalf("%s: %+v", args, o.Err)
		}
		var got, want map[string]json.RawMessage
		if err := json.Unmarshal(req.ArgsJson, &got); err != nil {
			t.Fatalf("%s: the plugin gets %s: %v", args, req.ArgsJson, err)
		}
		_ = json.Unmarshal([]byte(args), &want)
		want["buf-b64"] = json.RawMessage(`""`)
		if len(got) != len(want) {
			t.Fatalf("%s: the plugin gets %s", args, req.ArgsJson)
		}
		for k, v := range want {
			if string(got[k]) != string(v) {
				t.Fatalf("%s: member %q is %s, want %s", args, k, got[k], v)
			}
		}
		if string(req.Blob) != "ABC" {
			t.Fatalf("%s: blob %q", args, req.Blob)
		}
	}
}
