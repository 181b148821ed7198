package engine

import (
	"fmt"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/policy"
)

// The channel's policy per caller (ChannelConfig.policy, agent.hcl's
// allow): programs inside the guest are not trusted like the host, so a
// local socket may let each user and group call only some commands. Every
// request of a session runs as its caller, whose identity the kernel gave
// when it connected (SO_PEERCRED, SO_PEERGROUPS).

// channelPolicy resolves a channel's policy; nil when it has none.
func channelPolicy(c *pb.ChannelConfig) (*policy.Policy, error) {
	if !c.GetHasPolicy() {
		return nil, nil
	}
	rules := make(map[string][]string, len(c.GetPolicy()))
	for _, r := range c.GetPolicy() {
		rules[r.GetCommand()] = append(rules[r.GetCommand()], r.GetCallers()...)
	}
	p, err := policy.Parse(rules, policy.Resolver{})
	if err != nil {
		return nil, fmt.Errorf("parser: channel %s: %w", c.GetName(), err)
	}
	return p, nil
}

// setPolicy installs the channel's policy (at configuration, and again at
// every reconfiguration).
func (c *channelState) setPolicy(cfg *pb.ChannelConfig) error {
	p, err := channelPolicy(cfg)
	if err != nil {
		return err
	}
	c.policy.Store(p)
	return nil
}

// identity is the caller as the policy sees it.
func identity(c *pb.Caller) policy.Identity {
	if c == nil {
		return policy.Unknown
	}
	return policy.Identity{PID: c.GetPeerPid(), UID: c.GetPeerUid(), GID: c.GetPeerGid(), Groups: c.GetPeerGroups()}
}

// permitted tells whether the channel's policy lets the session's caller
// call command (true without a policy).
func (d *dispatcher) permitted(command string) bool {
	p := d.st.policy.Load()
	return p == nil || p.Allows(command, identity(d.caller))
}

// denial is the outcome of a command the policy refuses to this caller,
// logged with who asked; nil when it may run.
func (d *dispatcher) denial(command string) *dialect.Outcome {
	if d.permitted(command) {
		return nil
	}
	id := identity(d.caller)
	if logged, dropped := d.st.denials.admit(time.Now()); logged {
		args := []any{"channel", d.st.cfg.GetName(), "command", command, "uid", id.UID, "gid", id.GID, "pid", id.PID,
			"groups", fmt.Sprint(id.Groups)}
		if dropped > 0 {
			args = append(args, "not_logged_before", dropped)
		}
		d.e.logger.Warn("command refused by the channel's policy", args...)
	}
	return failOutcome(&dialect.Failure{Kind: dialect.FailDenied, Command: command, Caller: id.String(), Channel: d.st.cfg.GetName()})
}

// Refusals are logged one by one, up to denialBurst in a denialWindow per
// channel: a local user calling in a loop must not flood the journal. The
// first line after a quiet spell says how many went unlogged.
const (
	denialBurst  = 20
	denialWindow = 10 * time.Second
)

type denialLog struct {
	mu      sync.Mutex
	start   time.Time
	count   int
	dropped int
}

// admit tells whether a refusal at now is logged, and how many were not
// since the last one that was.
func (l *denialLog) admit(now time.Time) (logged bool, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= denialWindow {
		l.start, l.count = now, 0
	}
	if l.count >= denialBurst {
		l.dropped++
		return false, 0
	}
	l.count++
	dropped, l.dropped = l.dropped, 0
	return true, dropped
}
