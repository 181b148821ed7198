package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// newTestPlugin builds and configures a plugin as the supervisor would,
// with options (JSON, may be empty) and a state directory.
func newTestPlugin(t *testing.T, stateDir, opts string) *filesPlugin {
	t.Helper()
	f := newFilesPlugin()
	f.p.Logger = hclog.NewNullLogger()
	if err := f.p.Configure(sdkConfig(stateDir, opts)); err != nil {
		t.Fatalf("configure: %v", err)
	}
	t.Cleanup(f.closeAll)
	return f
}

// reply is one command's outcome as the parser sees it.
type reply struct {
	result json.RawMessage
	blob   []byte
	err    *pb.Error
}

func (r reply) object(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.result, &m); err != nil {
		t.Fatalf("result %s is not an object: %v", r.result, err)
	}
	return m
}

// run sends one request through CommandPlugin.Run, the data plane's path.
// blob, when not nil, is what the parser would extract from buf-b64, leaving
// an empty buf-b64 member behind as it does.
func run(t *testing.T, f *filesPlugin, cmd, args string, blob []byte) reply {
	t.Helper()
	if cmd == "guest-file-write" && blob != nil && !strings.Contains(args, `"buf-b64"`) {
		args = strings.TrimSuffix(strings.TrimSpace(args), "}") + `,"buf-b64":""}`
	}
	resp := f.p.Run(context.Background(), &pb.RunRequest{Command: cmd, ArgsJson: []byte(args), Blob: blob})
	return reply{result: resp.ResultJson, blob: resp.Blob, err: resp.Error}
}

// ok runs a request that must succeed.
func ok(t *testing.T, f *filesPlugin, cmd, args string, blob []byte) reply {
	t.Helper()
	r := run(t, f, cmd, args, blob)
	if r.err != nil {
		t.Fatalf("%s %s: unexpected error %s: %s", cmd, args, r.err.Class, r.err.Desc)
	}
	return r
}

// fails runs a request that must fail with a GenericError of text desc.
func fails(t *testing.T, f *filesPlugin, cmd, args string, blob []byte, desc string) {
	t.Helper()
	r := run(t, f, cmd, args, blob)
	if r.err == nil {
		t.Fatalf("%s %s: succeeded with %s, want error %q", cmd, args, r.result, desc)
	}
	if r.err.Class != sdk.ClassGenericError || r.err.Desc != desc {
		t.Fatalf("%s %s: error %s %q, want GenericError %q", cmd, args, r.err.Class, r.err.Desc, desc)
	}
}

func openHandle(t *testing.T, f *filesPlugin, path, mode string) int64 {
	t.Helper()
	args, _ := json.Marshal(map[string]string{"path": path, "mode": mode})
	r := ok(t, f, "guest-file-open", string(args), nil)
	var h int64
	if err := json.Unmarshal(r.result, &h); err != nil {
		t.Fatalf("guest-file-open returned %s, want an integer: %v", r.result, err)
	}
	return h
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func sdkConfig(stateDir, opts string) sdk.Config {
	return sdk.Config{StateDir: stateDir, Options: json.RawMessage(opts)}
}
