package e2e

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/plugintest"
)

// The SDK's test helper runs the test plugin for real: common service,
// Configure, gRPC Run with messages far over gRPC's 4 MiB default in both
// directions, and the data plane.
func TestPluginOverRealGRPC(t *testing.T) {
	p := plugintest.Start(t, filepath.Join(pluginDir, "guest-agent-cmd-test"))
	if p.Info.Name != "cmd-test" || p.Info.Kind != pb.Kind_KIND_COMMAND || len(p.Info.Commands) != 9 {
		t.Fatalf("info: %+v", p.Info)
	}
	health, err := p.Clients.Base.Health(context.Background(), &pb.HealthRequest{})
	if err != nil || !health.Healthy {
		t.Fatalf("health: %+v %v", health, err)
	}
	p.Configure(t, `{}`)

	in := bytes.Repeat([]byte("guest-agent "), 1<<20) // 12 MiB
	resp, err := p.Clients.Command.Run(context.Background(), &pb.RunRequest{Command: "test-blob", ArgsJson: []byte(`{}`), Blob: in})
	if err != nil || resp.Error != nil || !bytes.Equal(resp.Blob, in) {
		t.Fatalf("12 MiB echo over gRPC: err=%v resp.Error=%v len=%d", err, resp.GetError(), len(resp.GetBlob()))
	}
	resp, err = p.Clients.Command.Run(context.Background(), &pb.RunRequest{Command: "test-blob", ArgsJson: []byte(`{"size":50331648}`)})
	if err != nil || len(resp.GetBlob()) != 48<<20 {
		t.Fatalf("48 MiB reply over gRPC: err=%v len=%d", err, len(resp.GetBlob()))
	}
	dp := p.Call(t, &pb.RunRequest{Command: "test-blob", ArgsJson: []byte(`{"size":1000}`)})
	if len(dp.Blob) != 1000 || string(dp.ResultJson) != `{"count":1000}` {
		t.Fatalf("data plane: %s %d", dp.ResultJson, len(dp.Blob))
	}
	bad := p.Call(t, &pb.RunRequest{Command: "test-blob", ArgsJson: []byte(`{"size":"x"}`)})
	if bad.Error == nil || bad.Error.Desc != "Invalid parameter type for 'size', expected: integer" {
		t.Fatalf("argument validation: %+v", bad.Error)
	}
}
