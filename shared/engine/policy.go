package engine

import (
	"fmt"

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
	d.e.logger.Warn("command refused by the channel's policy", "channel", d.st.cfg.GetName(), "command", command,
		"uid", id.UID, "gid", id.GID, "pid", id.PID, "groups", fmt.Sprint(id.Groups))
	return failOutcome(&dialect.Failure{Kind: dialect.FailDenied, Command: command, Caller: id.String(), Channel: d.st.cfg.GetName()})
}
