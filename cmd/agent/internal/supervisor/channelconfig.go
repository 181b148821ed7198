package supervisor

import (
	"sort"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// channelConfig is what the parser gets of a channel: its dialect, the
// allow and block lists, and the policy per caller with the request
// timeout of local channels (the monitor's).
func channelConfig(ch config.Channel) *pb.ChannelConfig {
	c := &pb.ChannelConfig{Name: ch.Name, Dialect: ch.Dialect, Allow: ch.AllowRPCs, Block: ch.BlockRPCs,
		ThawOnDisconnect: ch.ThawOnDisconnect}
	if rules := ch.Policy(); rules != nil {
		c.HasPolicy = true
		commands := make([]string, 0, len(rules))
		for command := range rules {
			commands = append(commands, command)
		}
		sort.Strings(commands)
		for _, command := range commands {
			c.Policy = append(c.Policy, &pb.PolicyRule{Command: command, Callers: rules[command]})
		}
	}
	if d, err := ch.RequestDeadline(); err == nil { // validated with the configuration
		c.RequestTimeoutMs = d.Milliseconds()
	}
	return c
}
