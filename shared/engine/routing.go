package engine

import (
	"context"
	"encoding/json"
	"sort"
	"sync/atomic"
	"time"

	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/policy"
)

// Routing: which plugin serves a command on a channel (the routes the
// supervisor configured, CommandSpec.dialects), and whether it may run here
// at all (the channel's allow and block lists, the frozen state). Sessions
// and dispatch ask here; nothing else decides.

// routesPendingWait bounds how long a request waits for the routes of a
// first start.
const routesPendingWait = 30 * time.Second

// awaitRoutes waits until the routes are complete, if they are not yet.
func (e *Engine) awaitRoutes(ctx context.Context) {
	e.mu.RLock()
	ready := e.routesReady
	e.mu.RUnlock()
	if ready == nil {
		return
	}
	select {
	case <-ready:
	case <-ctx.Done():
	case <-time.After(routesPendingWait):
	}
}

// lookup reads the routing table: command's route, and whether the routes
// are still being learnt (ConfigureParserRequest.routes_pending).
func (e *Engine) lookup(command string) (route *pb.Route, pending bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.routes[command], e.routesReady != nil
}

// routeOf returns command's route, waiting for the routes of a first start
// when it is not known yet, and the limits it runs under.
func (d *dispatcher) routeOf(ctx context.Context, command string) (*pb.Route, resolvedLimits) {
	d.e.mu.RLock()
	route := d.e.routes[command]
	lim := d.e.limits
	pending := d.e.routesReady != nil
	d.e.mu.RUnlock()
	if route == nil && pending {
		d.e.awaitRoutes(ctx)
		route, _ = d.e.lookup(command)
	}
	return route, lim
}

// channelState is one channel: its configuration with the allow and block
// lists, its dialect with the dialect's options, its sessions and its
// memory budget.
type channelState struct {
	cfg     *pb.ChannelConfig
	dialect dialect.Dialect
	// local are the dialect's local commands (Options.LocalCommands).
	local map[string]*dialect.LocalCommand
	// ordered: replies in request order (Options.OrderedReplies).
	ordered bool
	allow   map[string]bool
	block   map[string]bool
	// policy is the channel's policy per caller; nil: none.
	policy   atomic.Pointer[policy.Policy]
	denials  denialLog
	sessions atomic.Int64
	budget   *budget
}

func newChannelState(cfg *pb.ChannelConfig, d dialect.Dialect, b *budget) *channelState {
	opts := d.Options()
	st := &channelState{cfg: cfg, dialect: d, ordered: opts.OrderedReplies,
		allow: toSet(cfg.Allow), block: toSet(cfg.Block), budget: b}
	if len(opts.LocalCommands) > 0 {
		st.local = make(map[string]*dialect.LocalCommand, len(opts.LocalCommands))
		for i := range opts.LocalCommands {
			st.local[opts.LocalCommands[i].Name] = &opts.LocalCommands[i]
		}
	}
	return st
}

// enabled applies the channel's allow and block lists (qemu-ga's
// --allow-rpcs and --block-rpcs).
func (c *channelState) enabled(command string) bool {
	if c.block[command] {
		return false
	}
	if len(c.allow) > 0 && !c.allow[command] {
		return false
	}
	return true
}

// Commands lists the commands of the session's channel as its routing
// sees them (guest-info).
func (d *dispatcher) Commands() []dialect.CommandInfo {
	d.e.awaitRoutes(context.Background())
	d.e.mu.RLock()
	defer d.e.mu.RUnlock()
	out := make([]dialect.CommandInfo, 0, len(d.e.routes)+len(d.st.local))
	for _, c := range d.st.local {
		out = append(out, dialect.CommandInfo{Name: c.Name, Enabled: d.st.enabled(c.Name) && d.permitted(c.Name), SuccessResponse: c.SuccessResponse})
	}
	// While frozen, what is refused is listed disabled, as qemu-ga does.
	frozen := d.e.freeze.isFrozen()
	for _, r := range d.e.routes {
		if !servesDialect(r, d.st.cfg.Dialect) || d.st.local[r.Command] != nil {
			continue
		}
		enabled := r.Enabled && d.st.enabled(r.Command) && d.permitted(r.Command) && (!frozen || r.GetSpec().GetAllowedWhileFrozen())
		out = append(out, dialect.CommandInfo{Name: r.Command, Enabled: enabled, SuccessResponse: r.GetSpec().GetSuccessResponse()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// refusal is the outcome of a command that will not run here for this
// session's caller: unknown on this channel's dialect, disabled by the
// channel's lists or its route, refused to this caller by the channel's
// policy, or refused while frozen; nil when it may
// run. route is nil for a local command of the dialect. It needs no plugin,
// so a session answers it at once, in order.
func (d *dispatcher) refusal(command string, route *pb.Route) *dialect.Outcome {
	local := d.st.local[command] != nil
	if route != nil && !servesDialect(route, d.st.cfg.Dialect) {
		route = nil // another dialect's command: unknown here
	}
	if !local && route == nil {
		return failOutcome(&dialect.Failure{Kind: dialect.FailUnknown, Command: command})
	}
	if !d.st.enabled(command) || (!local && !route.Enabled) {
		return failOutcome(&dialect.Failure{Kind: dialect.FailDisabled, Command: command})
	}
	if o := d.denial(command); o != nil {
		return o
	}
	if !local && d.e.freeze.isFrozen() && !route.GetSpec().GetAllowedWhileFrozen() {
		return failOutcome(&dialect.Failure{Kind: dialect.FailFrozen, Command: command})
	}
	return nil
}

// argsObject is the arguments as the plugin gets them: "{}" when absent.
func argsObject(args json.RawMessage) []byte {
	if len(args) == 0 {
		return []byte("{}")
	}
	return args
}

// servesDialect tells whether a routed command belongs on a channel of the
// given dialect.
func servesDialect(r *pb.Route, dialect string) bool {
	ds := r.GetSpec().GetDialects()
	if len(ds) == 0 {
		return true
	}
	for _, d := range ds {
		if d == dialect {
			return true
		}
	}
	return false
}
