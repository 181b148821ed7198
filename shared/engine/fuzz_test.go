package engine

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/internal/wire"
)

// FuzzExtractBlobArg: the parser takes a bulk argument (guest-file-write's
// buf-b64) out of the arguments before they go to the plugin. The rest must
// reach the plugin as the same members with the same values, the bulk one
// an empty string, in a document that is still JSON; the blob is exactly
// what strict base64 decoding gives; anything else is a GenericError.
func FuzzExtractBlobArg(f *testing.F) {
	for _, s := range []string{
		`{"handle":1000,"buf-b64":"QUJD"}`,
		`{"buf-b64":"QUJDRA==","handle":1000,"count":4}`,
		`{"handle":1000}`,
		`{"handle":1000,"buf-b64":""}`,
		`{"handle":1000,"buf-b64":"QUJD\nRA=="}`,
		`{"handle":1000,"buf-b64":"QU\u004aD"}`,
		`{"handle":1000,"buf-b64":5}`,
		`{"handle":1000,"buf-b64":"QUJDRA"}`,
		`{"handle":1000,"buf-b64":"QUJD","\u0001":1}`,
		`{"handle":1000,"buf-b64":"QUJD","\u007f\u2028<>&\"\\":{"a":[1]}}`,
		`{"handle":1000,"buf-b64":"QUJD","buf-b64":"QUJD"}`,
		`[]`, `{`,
	} {
		f.Add([]byte(s))
	}
	const member = "buf-b64"
	f.Fuzz(func(t *testing.T, args []byte) {
		req := &pb.RunRequest{Command: "guest-file-write", ArgsJson: append([]byte(nil), args...)}
		var pool dataplane.BufferPool
		o := extractBlobArg(req, member, &pool)
		members, splitErr := wire.SplitObject(args)
		if o != nil {
			if o.Err == nil || o.Err.Class != wire.ClassGenericError || o.Err.Desc == "" {
				t.Fatalf("%q: outcome %+v, want a GenericError", args, o)
			}
			return
		}
		if splitErr != nil {
			t.Fatalf("%q accepted though SplitObject says %v", args, splitErr)
		}
		idx := -1
		for i, m := range members {
			if m.Key == member {
				idx = i
			}
		}
		if idx < 0 {
			if !bytes.Equal(req.ArgsJson, args) || req.Blob != nil {
				t.Fatalf("%q without %s changed: %q, blob %q", args, member, req.ArgsJson, req.Blob)
			}
			return
		}
		text, _ := wire.StringValue(members[idx].Value)
		want, err := base64.StdEncoding.Strict().DecodeString(string(text))
		if err != nil || !bytes.Equal(req.Blob, want) {
			t.Fatalf("%q: blob %q, strict base64 gives %q (%v)", args, req.Blob, want, err)
		}
		rest, err := wire.SplitObject(req.ArgsJson)
		if err != nil || !json.Valid(req.ArgsJson) {
			t.Fatalf("%q: the plugin gets %q, not a JSON object: %v", args, req.ArgsJson, err)
		}
		if len(rest) != len(members) {
			t.Fatalf("%q: the plugin gets %q: %d members, want %d", args, req.ArgsJson, len(rest), len(members))
		}
		for i, m := range rest {
			wantValue := members[i].Value
			if i == idx {
				wantValue = []byte(`""`)
			}
			if m.Key != members[i].Key || !bytes.Equal(m.Value, wantValue) {
				t.Fatalf("%q: the plugin gets %q: member %d is %q=%s, want %q=%s", args, req.ArgsJson, i, m.Key, m.Value, members[i].Key, wantValue)
			}
		}
	})
}
