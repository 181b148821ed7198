package sdk

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/rpcplugin"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// Channel is one channel an exchange serves.
type Channel struct {
	Name    string
	Method  string
	Path    string
	Options json.RawMessage
	Logger  hclog.Logger
	// WaitForDevice: the channel was lost after a hand-over (its device
	// unplugged). Open waits for the device to come back and returns once
	// it is served again, whatever the channel's retry option says;
	// methods without a device ignore it.
	WaitForDevice bool
}

// DecodeOptions decodes the channel's method options.
func (c Channel) DecodeOptions(v any) error {
	if len(c.Options) == 0 || string(c.Options) == "null" {
		return nil
	}
	if err := json.Unmarshal(c.Options, v); err != nil {
		return fmt.Errorf("channel %s options: %w", c.Name, err)
	}
	return nil
}

// Exchange is implemented by exchange plugins: they carry raw requests in and
// responses out by handing sessions to the parser.
type Exchange interface {
	// Open prepares the channel (opens the device, binds the socket) and
	// returns once it is ready, with the path it resolved. It then serves in
	// the background, sending sessions to out, until ctx ends; it must release
	// everything it opened by then.
	Open(ctx context.Context, ch Channel, out *session.Outbox) (resolvedPath string, err error)
}

// ExchangePlugin is a plugin that serves channels.
type ExchangePlugin struct {
	Name     string
	Version  string
	Methods  []string
	Exchange Exchange
	Logger   hclog.Logger
}

// ServeExchange runs the exchange plugin until the supervisor stops it.
func ServeExchange(p *ExchangePlugin) {
	if p.Logger == nil {
		p.Logger = NewLogger(p.Name)
	}
	info := &pb.InfoResponse{Name: p.Name, Version: p.Version, Kind: pb.Kind_KIND_EXCHANGE, Methods: p.Methods}
	srv := &exchangeServer{p: p, channels: map[string]context.CancelFunc{}}
	rpcplugin.Serve(p.Logger, func(s *grpc.Server, _ *plugin.GRPCBroker) {
		pb.RegisterPluginServer(s, &rpcplugin.BaseServer{Description: info})
		pb.RegisterExchangeServer(s, srv)
	})
}

type exchangeServer struct {
	pb.UnimplementedExchangeServer
	p        *ExchangePlugin
	mu       sync.Mutex
	channels map[string]context.CancelFunc
}

func (s *exchangeServer) OpenChannel(_ context.Context, req *pb.OpenChannelRequest) (*pb.OpenChannelResponse, error) {
	supported := false
	for _, m := range s.p.Methods {
		supported = supported || m == req.Method
	}
	if !supported {
		return nil, fmt.Errorf("%s: method %q is not served (it serves %v)", s.p.Name, req.Method, s.p.Methods)
	}
	s.mu.Lock()
	if cancel, ok := s.channels[req.Channel]; ok {
		cancel() // reopened after a parser restart
		delete(s.channels, req.Channel)
	}
	s.mu.Unlock()

	out, err := session.DialOutbox(req.InboxSocket)
	if err != nil {
		return nil, fmt.Errorf("channel %s: %w", req.Channel, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := Channel{
		Name: req.Channel, Method: req.Method, Path: req.Path, Options: req.OptionsJson,
		Logger:        s.p.Logger.With("channel", req.Channel, "method", req.Method),
		WaitForDevice: req.WaitForDevice,
	}
	resolved, err := s.p.Exchange.Open(ctx, ch, out)
	if err != nil {
		cancel()
		out.Close()
		return nil, fmt.Errorf("channel %s: %w", req.Channel, err)
	}
	go func() {
		// The parser going away ends the channel; the supervisor reopens it
		// once a new parser is up.
		select {
		case <-out.Done():
			ch.Logger.Debug("parser closed the inbox")
		case <-ctx.Done():
		}
		cancel()
		out.Close()
	}()
	s.mu.Lock()
	s.channels[req.Channel] = cancel
	s.mu.Unlock()
	rpcplugin.ReleaseStartupMemory()
	return &pb.OpenChannelResponse{ResolvedPath: resolved, HandedOver: out.HandedOver()}, nil
}

func (s *exchangeServer) CloseChannel(_ context.Context, req *pb.CloseChannelRequest) (*pb.CloseChannelResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cancel, ok := s.channels[req.Channel]; ok {
		cancel()
		delete(s.channels, req.Channel)
	}
	return &pb.CloseChannelResponse{}, nil
}
