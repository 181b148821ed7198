package supervisor

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/shared/rpcplugin"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/pidfd"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"google.golang.org/grpc"
)

// launcher starts plugin processes from one locked OS thread that lives as
// long as the supervisor: the parent-death signal of a child follows the
// thread that forked it, so a Go thread that exits would kill plugins (and a
// thread that never forked them could not protect them).
//
// Launches run in parallel (cold start), each on an idle locked thread of a
// pool that grows to the largest number of concurrent launches.
type launcher struct {
	idle chan chan func()
}

func newLauncher() *launcher {
	return &launcher{idle: make(chan chan func(), 64)}
}

func (l *launcher) do(f func()) {
	var worker chan func()
	select {
	case worker = <-l.idle:
	default:
		worker = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread stays ours
			for job := range worker {
				job()
			}
		}()
	}
	done := make(chan struct{})
	worker <- func() { f(); close(done) }
	<-done
	select {
	case l.idle <- worker:
	default:
		// Pool full: park the thread rather than end it, since its end
		// would signal the children it forked.
	}
}

// running is one live plugin process.
type running struct {
	client  *plugin.Client
	clients *rpcplugin.Clients
	pid     int
	exited  chan struct{} // closed when the process is gone
	proc    *processRunner
}

type launchSpec struct {
	path     string
	name     string
	checksum string // hex SHA-256, "" = not pinned
	sockDir  string
	logLevel string
	logger   hclog.Logger
	tls      bool // go-plugin's AutoMTLS
}

func (l *launcher) launch(spec launchSpec) (*running, error) {
	var r *running
	var err error
	l.do(func() { r, err = startPlugin(spec) })
	return r, err
}

func startPlugin(spec launchSpec) (*running, error) {
	var pr *processRunner
	cfg := &plugin.ClientConfig{
		HandshakeConfig:  rpcplugin.Handshake,
		VersionedPlugins: rpcplugin.PluginSets(nil),
		// go-plugin makes a socket directory per plugin under TempDir,
		// tells the plugin (PLUGIN_UNIX_SOCKET_DIR), puts the
		// supervisor's own broker sockets there too, and removes it in
		// Kill. A plugin inherits the supervisor's environment.
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: spec.sockDir},
		RunnerFunc: func(_ hclog.Logger, prepared *exec.Cmd, _ string) (runner.Runner, error) {
			var err error
			pr, err = newProcessRunner(spec, prepared, []string{rpcplugin.EnvLogLevel + "=" + spec.logLevel})
			return pr, err
		},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         spec.tls,
		Logger:           clientLogger{spec.logger},
		StartTimeout:     20 * time.Second,
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(rpcplugin.MaxMessageBytes), grpc.MaxCallSendMsgSize(rpcplugin.MaxMessageBytes))},
	}
	client := plugin.NewClient(cfg)
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("start plugin %s (%s): %w", spec.name, spec.path, err)
	}
	raw, err := rpc.Dispense(rpcplugin.PluginName)
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("plugin %s: %w", spec.name, err)
	}
	r := &running{client: client, clients: raw.(*rpcplugin.Clients), exited: make(chan struct{}), pid: pr.pid, proc: pr}
	watchExit(r)
	return r, nil
}

// watchExit closes r.exited when the process ends: at once through a pidfd,
// else (a kernel without pidfd) when go-plugin has reaped it, which waits
// for the plugin's output pipes too. Neither polls.
func watchExit(r *running) {
	exited, err := pidfd.Exited(r.pid)
	if err != nil {
		exited = r.proc.reaped
	}
	go func() {
		<-exited
		close(r.exited)
	}()
}

// exitStatus says how the process ended ("exit status 2", "killed by
// SIGKILL") once its client's Kill has returned.
func (r *running) exitStatus() string { return r.proc.exitStatus() }

// clientLogger is the logger go-plugin gets for a plugin. The plugin's own
// records, which go-plugin forwards through a logger Named after the plugin,
// pass unchanged; go-plugin's own line on the end of the process is debug,
// since the supervisor logs that end once, with the plugin's name, pid and
// what it means (plugin stopped, plugin exited unexpectedly).
type clientLogger struct{ hclog.Logger }

func (l clientLogger) Info(msg string, args ...interface{}) {
	if msg == "plugin process exited" {
		l.Logger.Debug(msg, args...)
		return
	}
	l.Logger.Info(msg, args...)
}

func (l clientLogger) Error(msg string, args ...interface{}) {
	if msg == "plugin process exited" {
		l.Logger.Debug(msg, args...)
		return
	}
	l.Logger.Error(msg, args...)
}

// info asks a running plugin what it is.
func (r *running) info(ctx context.Context) (*pb.InfoResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return r.clients.Base.Info(ctx, &pb.InfoRequest{})
}

// stop ends the plugin: go-plugin asks it to exit, then kills it.
func (r *running) stop() {
	r.client.Kill()
	select {
	case <-r.exited:
	case <-time.After(3 * time.Second):
		_ = syscall.Kill(r.pid, syscall.SIGKILL)
	}
}
