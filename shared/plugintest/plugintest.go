// Package plugintest starts a plugin binary for real, the way the supervisor
// does (go-plugin handshake, AutoMTLS, raised message sizes), so a plugin's
// author tests it over real gRPC and its real data plane:
//
//	p := plugintest.Start(t, "./bin/guest-agent-cmd-hello")
//	p.Configure(t, `{"greeting":"hi"}`)
//	resp := p.Call(t, &guestagentv1.RunRequest{Command: "guest-hello", ArgsJson: []byte(`{"name":"x"}`)})
package plugintest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/rpcplugin"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// Plugin is one running plugin process.
type Plugin struct {
	Info    *pb.InfoResponse
	Clients *rpcplugin.Clients
	PID     int
	Dir     string // private temp directory (sockets, state)

	client *plugin.Client
	data   *dataplane.Client
}

// Start launches the plugin binary and asks its Info. The process is killed
// when the test ends.
func Start(t testing.TB, binary string) *Plugin {
	t.Helper()
	dir, err := os.MkdirTemp("", "pt") // short: unix socket paths are capped
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cmd := exec.Command(binary)
	cmd.Env = []string{"PLUGIN_UNIX_SOCKET_DIR=" + dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  rpcplugin.Handshake,
		VersionedPlugins: rpcplugin.PluginSets(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           hclog.New(&hclog.LoggerOptions{Name: filepath.Base(binary), Level: hclog.Warn, Output: os.Stderr}),
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(rpcplugin.MaxMessageBytes), grpc.MaxCallSendMsgSize(rpcplugin.MaxMessageBytes))},
	})
	t.Cleanup(client.Kill)
	rpc, err := client.Client()
	if err != nil {
		t.Fatalf("start %s: %v", binary, err)
	}
	raw, err := rpc.Dispense(rpcplugin.PluginName)
	if err != nil {
		t.Fatalf("dispense %s: %v", binary, err)
	}
	p := &Plugin{Clients: raw.(*rpcplugin.Clients), Dir: dir, client: client}
	if rc := client.ReattachConfig(); rc != nil {
		p.PID = rc.Pid
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p.Info, err = p.Clients.Base.Info(ctx, &pb.InfoRequest{}); err != nil {
		t.Fatalf("%s: Info: %v", binary, err)
	}
	return p
}

// Configure configures a command plugin with JSON options, a state
// directory and a data plane socket in p.Dir, and dials that data plane.
func (p *Plugin) Configure(t testing.TB, optionsJSON string) {
	t.Helper()
	sock := filepath.Join(p.Dir, "data.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.Clients.Command.Configure(ctx, &pb.ConfigureCommandRequest{
		OptionsJson: []byte(optionsJSON), StateDir: filepath.Join(p.Dir, "state"), DataplaneSocket: sock,
	}); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	c, err := dataplane.Dial(ctx, sock)
	if err != nil {
		t.Fatalf("data plane: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	p.data = c
}

// Call runs a request on the data plane (Configure first).
func (p *Plugin) Call(t testing.TB, req *pb.RunRequest) *pb.RunResponse {
	t.Helper()
	if p.data == nil {
		t.Fatal("plugintest: Configure before Call")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := p.data.Call(ctx, req)
	if err != nil {
		t.Fatalf("%s: %v", req.Command, err)
	}
	return resp
}

// Kill ends the plugin process.
func (p *Plugin) Kill() { p.client.Kill() }
