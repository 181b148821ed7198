package supervisor

import (
	"context"
	"fmt"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// ReopenChannel is a parser's word that a session handed over for good (a
// virtio-serial port with its host watch) has ended: the device is gone.
// The channel's exchange is started and waits for the device to come back
// (an unplugged port plugged again, outside systemd, which would restart
// the whole unit); once it has handed the port over again it is stopped.
func (h *hostServer) ReopenChannel(_ context.Context, req *pb.ReopenChannelRequest) (*pb.ReopenChannelResponse, error) {
	s := h.s
	for _, ch := range s.channels {
		if ch.Name == req.Channel {
			s.logger.Warn("channel lost; its exchange waits for the device to come back", "channel", ch.Name, "reason", req.Reason)
			go s.reopenLost(ch.Name)
			return &pb.ReopenChannelResponse{}, nil
		}
	}
	return nil, fmt.Errorf("no channel %q", req.Channel)
}

// reopenLost opens a lost channel again, waiting as long as it takes for its
// device; it gives up only when the agent stops.
func (s *Supervisor) reopenLost(name string) {
	for s.ctx.Err() == nil {
		var err error
		for _, ch := range s.channels {
			if ch.Name == name {
				err = s.openChannelWith(s.ctx, ch, true)
			}
		}
		if err == nil {
			s.stopIdleExchanges()
			return
		}
		s.logger.Error("reopening a lost channel failed; retrying", "channel", name, "error", err)
		select {
		case <-time.After(time.Second):
		case <-s.ctx.Done():
		}
	}
}
