package supervisor

import (
	"context"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/procmem"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// retireDrainWait is how long a plugin waits for requests in progress to
// finish before it answers Retire.
const retireDrainWait = time.Second

// Release is a parser's word that it no longer needs an idle command
// plugin: the plugin is stopped unless it is busy, and its next command
// starts it again (EnsureStarted).
func (h *hostServer) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	m, err := h.commandPlugin(req.Plugin)
	if err != nil {
		return nil, err
	}
	return &pb.ReleaseResponse{Stopped: h.s.retireIdle(ctx, m)}, nil
}

// retireIdle stops m if it agrees that it is idle. m.mu is held throughout,
// so an EnsureStarted for m waits and then starts a new process.
func (s *Supervisor) retireIdle(ctx context.Context, m *managed) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.run
	if r == nil {
		return false
	}
	select {
	case <-r.exited:
		return false // its end is being handled as a crash
	default:
	}
	resp, err := r.clients.Command.Retire(ctx, &pb.RetireRequest{DrainWaitMs: retireDrainWait.Milliseconds()})
	switch {
	case status.Code(err) == codes.Unimplemented:
		s.logger.Debug("plugin predates idle exit; it stays", "plugin", m.found.Name)
		return false
	case err != nil:
		s.logger.Warn("plugin did not answer whether it is idle; it stays", "plugin", m.found.Name, "error", err)
		return false
	case !resp.Retired:
		s.logger.Debug("idle plugin stays: it is busy", "plugin", m.found.Name, "busy", resp.Busy)
		return false
	}
	// Not current any more: its exit is not taken for a crash.
	m.run = nil
	r.stop()
	s.logger.Info("plugin stopped while idle; its next command starts it again", "plugin", m.found.Name, "pid", r.pid)
	// Its client, connections and start-up garbage: back to the system
	// now, so that the agent's idle size is its size after use too.
	procmem.ReturnIdle()
	return true
}
