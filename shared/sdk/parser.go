package sdk

import (
	"os"
	"runtime"
	"runtime/debug"

	"github.com/guest-agent/guest-agent/shared/dialect"
	"github.com/guest-agent/guest-agent/shared/engine"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/rpcplugin"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// The dialect contract, defined in package dialect (see there for the
// methods): a parser plugin's author implements Dialect and gets the rest
// from the engine.
type (
	// Dialect decodes and encodes one wire protocol ("qga", "nova", ...).
	Dialect = dialect.Dialect
	// StreamSession is one byte-stream session given to Dialect.ServeStream.
	StreamSession = dialect.StreamSession
	// Dispatcher runs commands for a dialect.
	Dispatcher = dialect.Dispatcher
	// Outcome is the result of one dispatched command.
	Outcome = dialect.Outcome
	// CommandInfo is one entry of guest-info's supported_commands.
	CommandInfo = dialect.CommandInfo
	// DialectOptions are what a dialect decides for itself: its local
	// commands and whether replies follow request order.
	DialectOptions = dialect.Options
	// LocalCommand is a command a dialect answers in the parser process.
	LocalCommand = dialect.LocalCommand
)

// ProtocolVersion is the plugin protocol this SDK speaks
// (proto/guestagent/v1); a plugin package depends on
// guest-agent-plugin-abi-<ProtocolVersion>.
const ProtocolVersion = rpcplugin.ProtocolVersion

// ParserPlugin is a plugin that serves dialects.
type ParserPlugin struct {
	Name     string
	Version  string
	Dialects []Dialect
	Logger   hclog.Logger
}

// ServeParser runs the parser plugin until the supervisor stops it.
func ServeParser(p *ParserPlugin) {
	if p.Logger == nil {
		p.Logger = NewLogger(p.Name)
	}
	if os.Getenv("GOGC") == "" {
		// The parser's live heap is a few hundred KiB and every request
		// leaves a little garbage: at the default GOGC it collects every
		// few thousand pings, and a collection shows in the tail latency.
		// Bulk buffers are pooled, so a larger ratio costs little memory.
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		// One P, as in command plugins: the parser's work is chains of
		// short steps, and with more Ps each hand-off between goroutines
		// wakes another thread. On a small guest those threads take the
		// core the host-facing work needs (make bench: file transfers
		// 10-40 % faster; guest-ping p99 unchanged within the noise).
		// Read-ahead encodes on its own goroutine all the same.
		runtime.GOMAXPROCS(1)
	}
	info := &pb.InfoResponse{Name: p.Name, Version: p.Version, Kind: pb.Kind_KIND_PARSER}
	for _, d := range p.Dialects {
		info.Dialects = append(info.Dialects, d.Name())
	}
	var e *engine.Engine
	rpcplugin.Serve(p.Logger, func(s *grpc.Server, broker *plugin.GRPCBroker) {
		e = engine.New(p.Name, p.Dialects, p.Logger, broker)
		pb.RegisterPluginServer(s, &rpcplugin.BaseServer{Description: info})
		pb.RegisterParserServer(s, e)
	})
	if e != nil {
		e.Close()
	}
}
