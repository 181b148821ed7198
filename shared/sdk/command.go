package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/internal/wire"
	"github.com/guest-agent/guest-agent/shared/rpcplugin"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// Command is one command a command plugin serves.
type Command struct {
	Name        string
	Description string
	// ArgsSchema is a JSON schema of the arguments, shown by tools.
	ArgsSchema string
	// NoSuccessResponse: the command sends nothing back when it succeeds
	// (guest-shutdown, guest-suspend-*).
	NoSuccessResponse bool
	// BlobArg names an argument carrying base64 data (e.g. "buf-b64"): the
	// parser decodes it and the handler finds raw bytes in Call.Blob.
	BlobArg string
	// BlobResult names a result member filled from Reply.Blob, base64-encoded
	// by the parser.
	BlobResult string
	// AllowedWhileFrozen lets the command run while filesystems are frozen.
	AllowedWhileFrozen bool
	// Dialects limits the command to channels of these dialects ("nova");
	// empty: every channel.
	Dialects []string
	// ReadAhead: the command reads on from where its last run stopped, and
	// the parser may run it before the host asks (see Call.ReadAhead).
	ReadAhead bool
	// Thaws: run with no arguments, the command thaws frozen filesystems
	// (guest-fsfreeze-thaw). The parser runs it on its own when a freeze
	// outlives its deadline or the host that froze goes away.
	Thaws   bool
	Handler func(ctx context.Context, call *Call) (any, error)
}

// Call is one invocation of a command.
type Call struct {
	Command string
	Args    json.RawMessage
	// Blob holds the decoded BlobArg. It is recycled when the handler
	// returns: copy what must outlive the call.
	Blob   []byte
	Caller *pb.Caller
	// ReadAhead is set when the parser runs a ReadAhead command before the
	// host asked for it. The handler records with it how to undo the run,
	// and everything that next needs the state the run changed calls
	// Settle first and undoes the run when the parser released it.
	ReadAhead *dataplane.Ticket

	pool   *dataplane.BufferPool
	pooled [][]byte
}

// AllocBlob returns a buffer of n bytes for the reply's blob. It is recycled
// once the reply has been sent, sparing page faults and garbage collection
// on bulk transfers; the handler must not keep it.
func (c *Call) AllocBlob(n int) []byte {
	b := c.pool.Get(n)
	c.pooled = append(c.pooled, b)
	return b
}

// Decode decodes the arguments with qemu-ga's validation (see DecodeArgs).
func (c *Call) Decode(v any) error { return DecodeArgs(c.Args, v) }

// Reply is what a handler returns when it has more to say than a JSON value.
// Returned with an error, only its FreezeState counts (a failed thaw may
// still have thawed the guest).
type Reply struct {
	Value       any
	Blob        []byte // goes into Command.BlobResult as base64
	NoResponse  bool   // success without a reply
	FreezeState pb.FreezeState
	// More: a ReadAhead command did not reach the end, so running it again
	// would return more.
	More bool
}

// Config is given to a command plugin before its first command.
type Config struct {
	Options json.RawMessage // the plugin's block of the agent configuration
	// StateDir is private and kept across reboots, but may lie on a
	// filesystem the guest freezes: write nothing there while frozen.
	StateDir string
	// RuntimeDir is private, emptied by a reboot and never frozen (a tmpfs
	// under /run): the place for state that must not outlive a boot, or
	// that is written while the guest is frozen.
	RuntimeDir string
	Logger     hclog.Logger
}

// DecodeOptions decodes the plugin's options, refusing unknown ones.
func (c Config) DecodeOptions(v any) error {
	if len(c.Options) == 0 || string(c.Options) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(c.Options))
	dec.DisallowUnknownFields() // a misspelt limit must not pass silently
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("plugin options: %w", err)
	}
	return nil
}

// CommandPlugin is a plugin that serves commands.
type CommandPlugin struct {
	Name     string
	Version  string
	Commands []Command
	// Configure, if set, runs once before any command with the plugin's
	// options; an error stops the plugin.
	Configure func(cfg Config) error
	// Health, if set, reports the plugin's health.
	Health func() error
	// Shutdown, if set, runs when the agent stops the plugin (not when the
	// plugin is killed or the agent dies): the place to undo what must not
	// outlive the agent, as qemu-ga's cleanup does (cmd-system thaws a
	// frozen guest). The agent kills the plugin about two seconds into it.
	Shutdown func()
	// Busy, if set, says why the plugin must not be stopped while idle:
	// it holds something a later command needs (a running child and its
	// unread status, an open handle, a freeze, a key). An empty string:
	// idle. Without it a plugin is idle when no parser is connected.
	Busy   func() string
	Logger hclog.Logger

	once   sync.Once
	index  map[string]*Command
	pool   dataplane.BufferPool
	memory dataplane.MemoryReturner
}

func (p *CommandPlugin) init() {
	p.once.Do(func() {
		if p.Logger == nil {
			p.Logger = NewLogger(p.Name)
		}
		p.index = make(map[string]*Command, len(p.Commands))
		for i := range p.Commands {
			p.index[p.Commands[i].Name] = &p.Commands[i]
		}
	})
}

// Info describes the plugin as the common Info call does.
func (p *CommandPlugin) Info() *pb.InfoResponse {
	p.init()
	info := &pb.InfoResponse{Name: p.Name, Version: p.Version, Kind: pb.Kind_KIND_COMMAND}
	for _, c := range p.Commands {
		info.Commands = append(info.Commands, &pb.CommandSpec{
			Name:               c.Name,
			Description:        c.Description,
			ArgsSchema:         c.ArgsSchema,
			SuccessResponse:    !c.NoSuccessResponse,
			BlobArg:            c.BlobArg,
			BlobResult:         c.BlobResult,
			AllowedWhileFrozen: c.AllowedWhileFrozen,
			Dialects:           c.Dialects,
			ReadAhead:          c.ReadAhead,
			Thaws:              c.Thaws,
		})
	}
	return info
}

// Run runs one request in this process. The data plane and the gRPC Run call
// both end here; tests of a plugin's handlers may call it directly.
func (p *CommandPlugin) Run(ctx context.Context, req *pb.RunRequest) *pb.RunResponse {
	resp, _ := p.run(ctx, req)
	return resp
}

// maxReadAheadRuns bounds the runs of one read-ahead request, whatever the
// parser asks.
const maxReadAheadRuns = 64

// serveDataplane runs a data plane request; buffers from AllocBlob are
// recycled once the response is written.
func (p *CommandPlugin) serveDataplane(ctx context.Context, req *pb.RunRequest) dataplane.Answer {
	if len(req.Blob) >= dataplane.BulkSize {
		p.memory.BulkDone()
	}
	if req.ReadAhead != 0 {
		return p.serveReadAhead(ctx, req)
	}
	resp, call := p.run(ctx, req)
	if call == nil || len(call.pooled) == 0 {
		return dataplane.Answer{Resp: resp}
	}
	return dataplane.Answer{Resp: resp, Done: func() { p.recycle(call) }}
}

func (p *CommandPlugin) recycle(call *Call) {
	for _, b := range call.pooled {
		if len(b) >= dataplane.BulkSize {
			p.memory.BulkDone()
		}
		p.pool.Put(b)
	}
}

// serveReadAhead runs a read-ahead request: the command again and again, as
// the host would ask it, until the count asked for, a run that has no more,
// or a failure (which the command has undone: it ends the results, unsent).
func (p *CommandPlugin) serveReadAhead(ctx context.Context, req *pb.RunRequest) dataplane.Answer {
	runs := int(min(max(req.ReadAheadRuns, 1), maxReadAheadRuns))
	cmd := p.index[req.Command]
	if cmd == nil || !cmd.ReadAhead {
		return dataplane.Answer{Resp: &pb.RunResponse{Error: &pb.Error{Class: ClassGenericError, Desc: fmt.Sprintf("%s cannot be read ahead", req.Command)}}}
	}
	out := &pb.RunResponse{}
	var blobs [][]byte
	var calls []*Call
	for i := 0; i < runs; i++ {
		resp, call := p.run(ctx, req)
		if call != nil {
			calls = append(calls, call)
		}
		if resp.Error != nil {
			if i == 0 {
				out.Error = resp.Error
			}
			break
		}
		out.ReadAheadResults = append(out.ReadAheadResults, &pb.ReadAheadResult{ResultJson: resp.ResultJson, BlobSize: uint32(len(resp.Blob)), More: resp.More})
		blobs = append(blobs, resp.Blob)
		if !resp.More {
			break
		}
	}
	return dataplane.Answer{Resp: out, Blobs: blobs, Done: func() {
		for _, c := range calls {
			p.recycle(c)
		}
	}}
}

func (p *CommandPlugin) run(ctx context.Context, req *pb.RunRequest) (resp *pb.RunResponse, call *Call) {
	p.init()
	resp = &pb.RunResponse{Id: req.Id}
	cmd := p.index[req.Command]
	if cmd == nil {
		resp.Error = &pb.Error{Class: ClassCommandNotFound, Desc: fmt.Sprintf("The command %s has not been found", req.Command)}
		return resp, nil
	}
	if req.DeadlineUnixNano > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.Unix(0, req.DeadlineUnixNano))
		defer cancel()
	}
	defer func() {
		// A bug in one command must not take the plugin down with the other
		// requests it is serving.
		if r := recover(); r != nil {
			p.Logger.Error("command panicked", "command", req.Command, "panic", r, "stack", string(debug.Stack()))
			resp = &pb.RunResponse{Id: req.Id, Error: &pb.Error{Class: ClassGenericError, Desc: fmt.Sprintf("internal error in %s: %v", req.Command, r)}}
			call = nil // buffers may still be in use by a runaway handler
		}
	}()
	call = &Call{Command: req.Command, Args: req.ArgsJson, Blob: req.Blob, Caller: req.Caller, ReadAhead: dataplane.TicketFrom(ctx), pool: &p.pool}
	out, err := cmd.Handler(ctx, call)
	r, isReply := out.(*Reply)
	if isReply {
		// Kept with an error too: a thaw whose hook failed has thawed.
		resp.FreezeState = r.FreezeState
	}
	if err != nil {
		resp.Error = wire.ToProtoError(err)
		return resp, call
	}
	if isReply {
		resp.Blob = r.Blob
		resp.NoResponse = r.NoResponse
		resp.More = r.More
		out = r.Value
	}
	if out == nil {
		resp.ResultJson = []byte("{}")
		return resp, call
	}
	if raw, ok := out.(json.RawMessage); ok {
		resp.ResultJson = raw
		return resp, call
	}
	b, err := json.Marshal(out)
	if err != nil {
		resp.Error = &pb.Error{Class: ClassGenericError, Desc: fmt.Sprintf("encode result of %s: %v", req.Command, err)}
		return resp, call
	}
	resp.ResultJson = b
	return resp, call
}

// ServeCommands runs the command plugin until the supervisor stops it.
func ServeCommands(p *CommandPlugin) {
	p.init()
	if os.Getenv("GOMAXPROCS") == "" {
		// A command plugin serves chains of short steps (read a frame,
		// run, write a frame). With one P a goroutine handing work to
		// another keeps running on the same thread; with several, each
		// hand-off wakes another thread, which on a small VM costs more
		// than the step (make bench: file transfers 20-40 % faster).
		// GOMAXPROCS in the environment overrides it.
		runtime.GOMAXPROCS(1)
	}
	srv := &commandServer{p: p}
	var once sync.Once
	shutdown := func() {
		if p.Shutdown != nil {
			once.Do(p.Shutdown)
		}
	}
	srv.drainOnSIGTERM(shutdown)
	rpcplugin.Serve(p.Logger, func(s *grpc.Server, _ *plugin.GRPCBroker) {
		pb.RegisterPluginServer(s, &rpcplugin.BaseServer{Description: p.Info(), HealthCheck: p.Health})
		pb.RegisterCommandServer(s, srv)
	})
	// serve returns when the agent asked the plugin to stop.
	shutdown()
}

type commandServer struct {
	pb.UnimplementedCommandServer
	p          *CommandPlugin
	mu         sync.Mutex
	configured bool
	dataplane  *dataplane.Server
	// unary counts Run calls in progress (tools and tests call Run; the
	// parsers use the data plane).
	unary    atomic.Int32
	listener net.Listener // the data plane's, closed by a drain
	running  inFlight     // requests in flight, data plane and Run (drain.go)
}

func (s *commandServer) Configure(_ context.Context, req *pb.ConfigureCommandRequest) (*pb.ConfigureCommandResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.configured {
		return nil, fmt.Errorf("%s: already configured", s.p.Name)
	}
	// MkdirAll writes nothing when the directory exists: a plugin started
	// while the guest is frozen does not block here.
	for _, dir := range []struct{ name, path string }{{"state", req.StateDir}, {"runtime", req.RuntimeDir}} {
		if dir.path == "" {
			continue
		}
		if err := os.MkdirAll(dir.path, 0o700); err != nil {
			return nil, fmt.Errorf("%s: %s directory: %w", s.p.Name, dir.name, err)
		}
	}
	if s.p.Configure != nil {
		cfg := Config{Options: req.OptionsJson, StateDir: req.StateDir, RuntimeDir: req.RuntimeDir, Logger: s.p.Logger}
		if err := s.p.Configure(cfg); err != nil {
			return nil, fmt.Errorf("%s: configure: %w", s.p.Name, err)
		}
	}
	if req.DataplaneSocket != "" {
		_ = os.Remove(req.DataplaneSocket)
		ln, err := net.Listen("unix", req.DataplaneSocket)
		if err != nil {
			return nil, fmt.Errorf("%s: data plane: %w", s.p.Name, err)
		}
		if err := os.Chmod(req.DataplaneSocket, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("%s: data plane: %w", s.p.Name, err)
		}
		s.listener = ln
		s.dataplane = &dataplane.Server{Handler: s.running.counted(s.p.serveDataplane), Logger: s.p.Logger}
		go func() {
			if err := s.dataplane.Serve(context.Background(), ln); err != nil {
				s.p.Logger.Error("data plane stopped", "error", err)
			}
		}()
	}
	rpcplugin.ReleaseStartupMemory()
	s.configured = true
	return &pb.ConfigureCommandResponse{}, nil
}

func (s *commandServer) Run(ctx context.Context, req *pb.RunRequest) (*pb.RunResponse, error) {
	s.unary.Add(1)
	defer s.unary.Add(-1)
	s.running.begin()
	defer s.running.end()
	return s.p.Run(ctx, req), nil
}

// Retire answers the supervisor's question whether the plugin may be
// stopped for idleness; once it says yes it takes no more requests.
func (s *commandServer) Retire(_ context.Context, req *pb.RetireRequest) (*pb.RetireResponse, error) {
	s.mu.Lock()
	dp := s.dataplane
	s.mu.Unlock()
	if dp == nil {
		return &pb.RetireResponse{Busy: "not configured"}, nil
	}
	why := dp.Retire(time.Duration(req.DrainWaitMs)*time.Millisecond, func() string {
		if s.unary.Load() > 0 {
			return "a command is running"
		}
		if s.p.Busy != nil {
			return s.p.Busy()
		}
		return ""
	})
	if why != "" {
		return &pb.RetireResponse{Busy: why}, nil
	}
	s.p.Logger.Debug("retiring while idle: no more data plane connections")
	return &pb.RetireResponse{Retired: true}, nil
}
