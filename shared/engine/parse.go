package engine

import (
	"context"
	"fmt"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// ParseRequest answers one whole request (the seed's parse_request).
func (e *Engine) ParseRequest(ctx context.Context, req *pb.ParseRequestRequest) (*pb.ParseRequestResponse, error) {
	d := e.dialectNamed(req.Dialect)
	if d == nil {
		return nil, fmt.Errorf("parser: dialect %q is not served", req.Dialect)
	}
	st := newChannelState(&pb.ChannelConfig{Name: "parse-request", Dialect: req.Dialect}, d,
		newBudget(DefaultChannelMemoryMax, DefaultSessionMemoryMax))
	caller := req.Caller
	if caller == nil {
		caller = &pb.Caller{Channel: st.cfg.Name, Dialect: req.Dialect, PeerPid: -1}
	}
	return &pb.ParseRequestResponse{Response: d.HandleMessage(ctx, e.newDispatcher(st, caller), req.Request)}, nil
}
