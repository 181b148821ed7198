// Command guest-agent-cmd-test is an out-of-tree style command plugin used by
// the end-to-end tests: a page of Go on the SDK, with commands that sleep,
// echo large payloads and crash on demand.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// version is set by the build (-X main.version) when a test needs two
// builds that differ, as an upgrade does.
var version = "1.0.0"

func main() {
	sdk.ServeCommands(&sdk.CommandPlugin{
		Name:    "cmd-test",
		Version: version,
		Commands: []sdk.Command{
			{
				Name: "test-sleep", Description: "sleeps for ms milliseconds",
				Handler: func(ctx context.Context, call *sdk.Call) (any, error) {
					var a struct {
						MS int64 `json:"ms"`
					}
					if err := call.Decode(&a); err != nil {
						return nil, err
					}
					select {
					case <-time.After(time.Duration(a.MS) * time.Millisecond):
					case <-ctx.Done():
						return nil, sdk.Errorf("interrupted: %v", ctx.Err())
					}
					return map[string]int{"pid": os.Getpid()}, nil
				},
			},
			{
				Name: "test-caller", Description: "returns who called: channel, dialect and the peer's credentials",
				Handler: func(_ context.Context, call *sdk.Call) (any, error) {
					c := call.Caller
					return map[string]any{"channel": c.GetChannel(), "dialect": c.GetDialect(),
						"peer-pid": c.GetPeerPid(), "peer-uid": c.GetPeerUid(), "peer-gid": c.GetPeerGid()}, nil
				},
			},
			{
				Name: "test-version", Description: "returns the plugin's version and pid",
				Handler: func(context.Context, *sdk.Call) (any, error) {
					return map[string]any{"version": version, "pid": os.Getpid()}, nil
				},
			},
			{
				Name: "test-pid", Description: "returns the plugin's pid",
				Handler: func(context.Context, *sdk.Call) (any, error) {
					return map[string]int{"pid": os.Getpid()}, nil
				},
			},
			{
				Name: "test-blob", Description: "returns size bytes of a pattern, or echoes its input",
				BlobArg: "in-b64", BlobResult: "out-b64",
				Handler: func(_ context.Context, call *sdk.Call) (any, error) {
					var a struct {
						Size  int64   `json:"size,omitempty"`
						InB64 *string `json:"in-b64"`
					}
					if err := call.Decode(&a); err != nil {
						return nil, err
					}
					out := call.Blob
					if a.Size > 0 {
						out = bytes.Repeat([]byte("0123456789abcdef"), int(a.Size/16)+1)[:a.Size]
					}
					return &sdk.Reply{Value: map[string]int{"count": len(out)}, Blob: out}, nil
				},
			},
			{
				Name: "test-result", Description: "returns its argument json verbatim as the result, even when it is not JSON (a broken plugin)",
				Handler: func(_ context.Context, call *sdk.Call) (any, error) {
					var a struct {
						JSON string `json:"json"`
					}
					if err := call.Decode(&a); err != nil {
						return nil, err
					}
					return json.RawMessage(a.JSON), nil
				},
			},
			{
				Name: "test-fail", Description: "fails with its argument message",
				Handler: func(_ context.Context, call *sdk.Call) (any, error) {
					var a struct {
						Message string `json:"message"`
					}
					if err := call.Decode(&a); err != nil {
						return nil, err
					}
					return nil, sdk.Errorf("%s", a.Message)
				},
			},
			{
				Name: "test-monitor-only", Description: "served on monitor channels only (programs inside the guest)",
				Dialects: []string{"monitor"},
				Handler: func(context.Context, *sdk.Call) (any, error) {
					return map[string]string{"seen-by": "monitor"}, nil
				},
			},
			{
				Name: "guest-ping", Description: "a duplicate of a core command: must be refused",
				Handler: func(context.Context, *sdk.Call) (any, error) { return nil, nil },
			},
		},
	})
}
