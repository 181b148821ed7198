package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/rpcplugin"
	"github.com/guest-agent/guest-agent/shared/session"
)

// Configure installs channels and routes and opens one inbox per channel.
// Called again (after a command plugin restart or a configuration reload) it
// replaces the routes; channels keep their inboxes.
func (e *Engine) Configure(_ context.Context, req *pb.ConfigureParserRequest) (*pb.ConfigureParserResponse, error) {
	routes := make(map[string]*pb.Route, len(req.Routes))
	for _, r := range req.Routes {
		routes[r.Command] = r
	}
	lim := resolvedLimits{
		maxRequest:     orDefault(req.GetLimits().GetMaxRequestBytes(), DefaultMaxRequestBytes),
		commandTimeout: time.Duration(orDefault(req.GetLimits().GetCommandTimeoutMs(), int64(DefaultCommandTimeout/time.Millisecond))) * time.Millisecond,
		maxSessions:    orDefault(req.GetLimits().GetMaxSessions(), DefaultMaxSessions),
		maxInFlight:    orDefault(req.GetLimits().GetMaxInFlight(), DefaultMaxInFlight),
		readAheadMax:   readAheadLimit(req.GetLimits().GetReadAheadMaxBytes()),
		sessionMemory:  orDefault(req.GetLimits().GetSessionMemoryMaxBytes(), DefaultSessionMemoryMax),
		channelMemory:  orDefault(req.GetLimits().GetChannelMemoryMaxBytes(), DefaultChannelMemoryMax),
		writeTimeout:   durationLimit(req.GetLimits().GetWriteTimeoutMs(), DefaultWriteTimeout),
		requestIdle:    durationLimit(req.GetLimits().GetRequestIdleTimeoutMs(), DefaultRequestIdleTimeout),
		pluginIdleExit: durationLimit(req.GetLimits().GetPluginIdleExitMs(), DefaultPluginIdleExit),
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.host == nil && req.HostBrokerId != 0 && e.broker != nil {
		conn, err := e.broker.Dial(req.HostBrokerId)
		if err != nil {
			return nil, fmt.Errorf("parser: dial host service: %w", err)
		}
		e.host = pb.NewHostClient(conn)
	}
	e.cfg, e.routes, e.limits = req, routes, lim
	// The routes are in place first: a freeze found past its deadline
	// thaws at once.
	defer e.freeze.configure(req.RuntimeDir, freezeMax(req.GetLimits().GetFsfreezeMaxMs()))
	switch {
	case req.RoutesPending && e.routesReady == nil:
		e.routesReady = make(chan struct{})
	case !req.RoutesPending && e.routesReady != nil:
		close(e.routesReady)
		e.routesReady = nil
	}
	for _, r := range req.Routes {
		if pc, ok := e.plugins[r.Plugin]; ok {
			pc.setSocket(r.DataplaneSocket)
		} else {
			e.plugins[r.Plugin] = &pluginConn{name: r.Plugin, socket: r.DataplaneSocket, engine: e}
		}
	}
	resp := &pb.ConfigureParserResponse{}
	if e.channels != nil {
		for _, c := range req.Channels {
			if st, ok := e.channels[c.Name]; ok {
				if err := st.setPolicy(c); err != nil {
					return nil, err
				}
				st.cfg, st.allow, st.block = c, toSet(c.Allow), toSet(c.Block)
			}
		}
		return resp, nil
	}
	e.channels = map[string]*channelState{}
	for _, c := range req.Channels {
		d := e.dialectNamed(c.Dialect)
		if d == nil {
			return nil, fmt.Errorf("parser: channel %s: dialect %q is not served by %s", c.Name, c.Dialect, e.name)
		}
		st := newChannelState(c, d, newBudget(lim.channelMemory, lim.sessionMemory))
		if err := st.setPolicy(c); err != nil {
			return nil, err
		}
		e.channels[c.Name] = st
		if req.InboxDir == "" {
			continue
		}
		path := filepath.Join(req.InboxDir, c.Name+".in")
		in, err := session.ListenInbox(path)
		if err != nil {
			return nil, fmt.Errorf("parser: channel %s: %w", c.Name, err)
		}
		e.inboxes = append(e.inboxes, in)
		go e.acceptFeeds(in, st)
		resp.Inboxes = append(resp.Inboxes, &pb.Inbox{Channel: c.Name, Socket: path})
	}
	e.limitMemory(lim, len(e.channels))
	rpcplugin.ReleaseStartupMemory()
	return resp, nil
}

// limitMemory sets the parser's soft memory limit to what its channels'
// budgets allow, plus room for the runtime: the parser runs with a high
// GOGC (tail latency), which alone would let garbage grow to several times
// the bytes the budgets bound before a collection. GOMEMLIMIT, when set,
// wins.
func (e *Engine) limitMemory(lim resolvedLimits, channels int) {
	if os.Getenv("GOMEMLIMIT") != "" || channels == 0 {
		return
	}
	debug.SetMemoryLimit(int64(channels)*lim.channelMemory + 64<<20)
}

// durationLimit resolves a limit in milliseconds: 0 is the default, a
// negative value means none (0).
func durationLimit(ms int64, def time.Duration) time.Duration {
	switch {
	case ms < 0:
		return 0
	case ms == 0:
		return def
	}
	return time.Duration(ms) * time.Millisecond
}

// freezeMax resolves fsfreeze_max_ms: 0 is the default, a negative value
// means no deadline.
func freezeMax(ms int64) time.Duration {
	switch {
	case ms < 0:
		return 0
	case ms == 0:
		return DefaultFsfreezeMax
	}
	return time.Duration(ms) * time.Millisecond
}

// readAheadLimit resolves read_ahead_max_bytes: 0 is the default, a
// negative value turns read-ahead off.
func readAheadLimit(v int64) int64 {
	switch {
	case v < 0:
		return 0
	case v == 0:
		return DefaultReadAheadMax
	}
	return v
}

func orDefault(v, def int64) int64 {
	if v <= 0 {
		return def
	}
	return v
}

func toSet(names []string) map[string]bool {
	if len(names) == 0 {
		return nil
	}
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}
