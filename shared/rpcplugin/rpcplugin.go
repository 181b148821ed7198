// Package rpcplugin is the go-plugin glue both ends of a plugin share: the
// handshake, the versioned plugin set, the typed gRPC clients the supervisor
// dispenses, and the plugin side's serving (logger, parent watch, Info and
// Health). Plugin authors do not need it: package sdk serves their plugin
// through it. The supervisor and plugintest import it.
package rpcplugin

import (
	"context"
	"os"
	"path/filepath"
	"runtime/pprof"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/pidfd"
	"github.com/guest-agent/guest-agent/shared/procmem"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// ProtocolVersion is the plugin protocol this SDK speaks
// (proto/guestagent/v1). A breaking change adds version 2 beside it and the
// supervisor negotiates through go-plugin's VersionedPlugins.
const ProtocolVersion = 1

// Handshake is the go-plugin handshake shared by the supervisor and every
// plugin: a plugin binary started by hand refuses to run and says why.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "GUEST_AGENT_PLUGIN",
	MagicCookieValue: "d7a1c1e0-4b8e-4a7b-9f0e-guest-agent",
}

// PluginName is the single go-plugin plugin every binary serves; its kind is
// told by the common Info call.
const PluginName = "guestagent"

// MaxMessageBytes raises gRPC's 4 MiB default on both sides: file reads reach
// 48 MiB, and a request may be 64 MiB.
const MaxMessageBytes = 128 << 20

// GRPCPlugin glues a plugin's gRPC services into go-plugin. The supervisor
// uses it with a nil Register (client side).
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Register func(s *grpc.Server, broker *plugin.GRPCBroker)
}

// GRPCServer registers the plugin's services.
func (p *GRPCPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	p.Register(s, broker)
	return nil
}

// Clients are the typed clients of one plugin, as seen by the supervisor.
type Clients struct {
	Base     pb.PluginClient
	Command  pb.CommandClient
	Exchange pb.ExchangeClient
	Parser   pb.ParserClient
	Broker   *plugin.GRPCBroker
}

// GRPCClient returns the clients; which typed one applies depends on Info.
func (p *GRPCPlugin) GRPCClient(_ context.Context, broker *plugin.GRPCBroker, cc *grpc.ClientConn) (interface{}, error) {
	return &Clients{
		Base:     pb.NewPluginClient(cc),
		Command:  pb.NewCommandClient(cc),
		Exchange: pb.NewExchangeClient(cc),
		Parser:   pb.NewParserClient(cc),
		Broker:   broker,
	}, nil
}

// PluginSets returns the versioned plugin sets for go-plugin.
func PluginSets(register func(s *grpc.Server, broker *plugin.GRPCBroker)) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolVersion: {PluginName: &GRPCPlugin{Register: register}},
	}
}

// EnvLogLevel carries the supervisor's log level to its plugins, so a plugin
// does not encode and pipe debug lines the supervisor would drop.
const EnvLogLevel = "GUEST_AGENT_LOG_LEVEL"

// EnvCPUProfileDir, when set, makes every plugin write a CPU profile
// (<dir>/<plugin>.pprof) for its whole life: `go tool pprof` reads it.
const EnvCPUProfileDir = "GUEST_AGENT_CPUPROFILE_DIR"

// NewLogger returns the logger a plugin should use: go-plugin forwards its
// JSON lines on stderr into the supervisor's log with the plugin's name.
func NewLogger(name string) hclog.Logger {
	level := hclog.LevelFromString(os.Getenv(EnvLogLevel))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      level,
		Output:     os.Stderr,
		JSONFormat: true,
	})
}

// Serve runs the go-plugin server of a plugin; it returns when the
// supervisor is done with the plugin.
func Serve(logger hclog.Logger, register func(s *grpc.Server, broker *plugin.GRPCBroker)) {
	watchParent(logger)
	if dir := os.Getenv(EnvCPUProfileDir); dir != "" {
		if f, err := os.Create(filepath.Join(dir, filepath.Base(os.Args[0])+".pprof")); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
		}
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: PluginSets(register),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts, grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxMessageBytes))
			return grpc.NewServer(opts...)
		},
		Logger: logger,
	})
}

// watchParent makes the plugin exit when the supervisor dies, even from
// SIGKILL. The supervisor also sets a parent-death signal, but that one follows
// the launching thread; a pidfd on the parent is readable exactly when it
// exits, so this costs no wake-up while the parent lives.
func watchParent(logger hclog.Logger) {
	ppid := os.Getppid()
	if ppid <= 1 {
		return
	}
	exited, err := pidfd.Exited(ppid)
	if err != nil {
		logger.Debug("no pidfd for the parent; relying on the parent-death signal", "error", err)
		return
	}
	go func() {
		<-exited
		logger.Info("supervisor exited; plugin stopping")
		os.Exit(0)
	}()
	// The parent may have died between Getppid and PidfdOpen.
	if os.Getppid() != ppid {
		os.Exit(0)
	}
}

// BaseServer answers the calls every plugin serves: Info (what it is and
// serves) and Health.
type BaseServer struct {
	pb.UnimplementedPluginServer
	Description *pb.InfoResponse
	// HealthCheck, if set, reports the plugin's health.
	HealthCheck func() error
}

// Info returns the plugin's description.
func (b *BaseServer) Info(context.Context, *pb.InfoRequest) (*pb.InfoResponse, error) {
	return b.Description, nil
}

// Health runs the plugin's health check, if it has one.
func (b *BaseServer) Health(context.Context, *pb.HealthRequest) (*pb.HealthResponse, error) {
	if b.HealthCheck != nil {
		if err := b.HealthCheck(); err != nil {
			return &pb.HealthResponse{Healthy: false, Message: err.Error()}, nil
		}
	}
	return &pb.HealthResponse{Healthy: true, Message: "ok"}, nil
}

// ReleaseStartupMemory hands the garbage of start-up (the go-plugin
// handshake, TLS certificates) and the executable's pages start-up brought
// in back to the system once a plugin is configured: an idle agent should
// cost little (see procmem).
func ReleaseStartupMemory() { procmem.ReturnIdle() }

// qgaCoreCommands are the commands the qga dialect answers in the parser
// process (parser-json's qga.go declares them as the dialect's local
// commands; a test there keeps the two lists equal).
var qgaCoreCommands = []string{"guest-sync-delimited", "guest-sync", "guest-ping", "guest-info"}

// CoreCommands lists the commands the parser answers itself on qga
// channels; the supervisor refuses them from command plugins and lists them
// with the registry.
func CoreCommands() []string { return append([]string(nil), qgaCoreCommands...) }

// IsCoreCommand tells whether name is a core command.
func IsCoreCommand(name string) bool {
	for _, c := range qgaCoreCommands {
		if c == name {
			return true
		}
	}
	return false
}
