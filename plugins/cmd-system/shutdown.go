package main

import (
	"context"
	"time"
)

// thawOnStopBudget bounds the thaw when the agent stops: the supervisor
// kills a plugin about two seconds after asking it to stop, and FITHAW
// itself is immediate.
const thawOnStopBudget = 1500 * time.Millisecond

// thawOnStop thaws a frozen guest when the agent stops cleanly, as qemu-ga's
// fsfreeze cleanup does: a stopped agent can no longer be asked to thaw.
// A killed agent (crash, SIGKILL) leaves the flag instead, and the next one
// reports "frozen" and thaws on request.
func (s *system) thawOnStop() {
	if !s.frozen.Load() {
		return
	}
	s.freezeMu.Lock()
	defer s.freezeMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), thawOnStopBudget)
	defer cancel()
	n, err := s.thawLocked(ctx)
	if err != nil {
		s.log.Error("thaw on stop failed", "thawed", n, "error", err)
		return
	}
	s.log.Warn("the agent is stopping: filesystems thawed", "thawed", n)
}
