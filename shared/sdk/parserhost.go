package sdk

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// Core commands are answered by the parser process that read the request,
// from the table the supervisor configured, so they never cross a process
// boundary (the ping latency bar depends on it).
var coreCommands = []string{"guest-sync-delimited", "guest-sync", "guest-ping", "guest-info"}

// CoreCommands lists the commands the parser answers itself; the supervisor
// refuses them from command plugins and lists them in guest-info.
func CoreCommands() []string { return append([]string(nil), coreCommands...) }

// IsCoreCommand tells whether name is a core command.
func IsCoreCommand(name string) bool { return isCore(name) }

// Default limits, used when the supervisor sends zero.
const (
	DefaultMaxRequestBytes = 64 << 20 // qemu-ga's limit for one request
	DefaultCommandTimeout  = 10 * time.Minute
	DefaultMaxSessions     = 64
	DefaultMaxInFlight     = 64
	// DefaultReadAheadMax bounds one read-ahead batch of a session (two
	// may be in flight): the data and its base64 text stay in the parser
	// until the host asks. Larger batches only add to the host's wait
	// when one is late (make bench).
	DefaultReadAheadMax     = 1 << 20
	pluginRestartWaitBudget = 10 * time.Second
)

// ServeParser runs the parser plugin until the supervisor stops it.
func ServeParser(p *ParserPlugin) {
	if p.Logger == nil {
		p.Logger = NewLogger(p.Name)
	}
	if os.Getenv("GOGC") == "" {
		// The parser's live heap is a few hundred KiB and every request
		// leaves a little garbage: at the default GOGC it collects every
		// few thousand pings, and a collection shows in the tail latency.
		// Bulk buffers are pooled, so a larger ratio costs little memory.
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		// One P, as in command plugins: the parser's work is chains of
		// short steps, and with more Ps each hand-off between goroutines
		// wakes another thread. On a small guest those threads take the
		// core the host-facing work needs (make bench: file transfers
		// 10-40 % faster; guest-ping p99 unchanged within the noise).
		// Read-ahead encodes on its own goroutine all the same.
		runtime.GOMAXPROCS(1)
	}
	info := &pb.InfoResponse{Name: p.Name, Version: p.Version, Kind: pb.Kind_KIND_PARSER}
	for _, d := range p.Dialects {
		info.Dialects = append(info.Dialects, d.Name())
	}
	var engine *ParserEngine
	serve(p.Logger, func(s *grpc.Server, broker *plugin.GRPCBroker) {
		engine = NewParserEngine(p, broker)
		pb.RegisterPluginServer(s, &baseServer{info: info})
		pb.RegisterParserServer(s, engine)
	})
	if engine != nil {
		engine.Close()
	}
}

// ParserEngine runs the sessions of every channel for a parser plugin.
type ParserEngine struct {
	pb.UnimplementedParserServer
	plugin *ParserPlugin
	broker *plugin.GRPCBroker
	logger hclog.Logger

	freeze freezeGuard
	// textPool recycles the base64 text of read-ahead results, blobPool
	// the decoded data of requests (guest-file-write), dialectPool the
	// requests and replies of the dialects (StreamSession.Buffers). All
	// three tell memory when they hand out a buffer, so whatever filled
	// them (a transfer, a burst of oversized input) is given back to the
	// system seconds after it stops.
	textPool    dataplane.BufferPool
	blobPool    dataplane.BufferPool
	dialectPool dataplane.BufferPool
	memory      memoryReturner

	mu        sync.RWMutex
	cfg       *pb.ConfigureParserRequest
	limits    resolvedLimits
	routes    map[string]*pb.Route
	channels  map[string]*channelState
	plugins   map[string]*pluginConn
	host      pb.HostClient
	inboxes   []*session.Inbox
	listeners []*net.UnixListener
	// routesReady is closed once the routes are complete (see
	// ConfigureParserRequest.routes_pending).
	routesReady chan struct{}
}

// routesPendingWait bounds how long a request waits for the routes of a
// first start.
const routesPendingWait = 30 * time.Second

// awaitRoutes waits until the routes are complete, if they are not yet.
func (e *ParserEngine) awaitRoutes(ctx context.Context) {
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

// Close stops the listeners handed over by exchanges and removes their
// socket files, as the exchange would have.
func (e *ParserEngine) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ln := range e.listeners {
		ln.Close()
	}
	e.listeners = nil
}

type resolvedLimits struct {
	maxRequest     int64
	commandTimeout time.Duration
	maxSessions    int64
	maxInFlight    int64
	readAheadMax   int64 // 0: no read-ahead
	sessionMemory  int64
	channelMemory  int64
	writeTimeout   time.Duration // 0: none
	requestIdle    time.Duration // 0: none
}

type channelState struct {
	cfg      *pb.ChannelConfig
	dialect  Dialect
	allow    map[string]bool
	block    map[string]bool
	sessions atomic.Int64
	budget   *budget
}

func (c *channelState) enabled(command string) bool {
	if c.block[command] {
		return false
	}
	if len(c.allow) > 0 && !c.allow[command] {
		return false
	}
	return true
}

// NewParserEngine returns an engine for p; broker may be nil (tests).
func NewParserEngine(p *ParserPlugin, broker *plugin.GRPCBroker) *ParserEngine {
	e := &ParserEngine{plugin: p, broker: broker, logger: p.Logger, plugins: map[string]*pluginConn{}}
	e.freeze.logger, e.freeze.thaw = p.Logger, e.thawOnOwnAccord
	e.textPool.Handed = e.memory.bulkDone
	e.blobPool.Handed = e.memory.bulkDone
	e.dialectPool.Handed = e.memory.bulkDone
	return e
}

func (e *ParserEngine) dialect(name string) Dialect {
	for _, d := range e.plugin.Dialects {
		if d.Name() == name {
			return d
		}
	}
	return nil
}

// Configure installs channels and routes and opens one inbox per channel.
// Called again (after a command plugin restart or a configuration reload) it
// replaces the routes; channels keep their inboxes.
func (e *ParserEngine) Configure(_ context.Context, req *pb.ConfigureParserRequest) (*pb.ConfigureParserResponse, error) {
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
				st.cfg, st.allow, st.block = c, toSet(c.Allow), toSet(c.Block)
			}
		}
		return resp, nil
	}
	e.channels = map[string]*channelState{}
	for _, c := range req.Channels {
		d := e.dialect(c.Dialect)
		if d == nil {
			return nil, fmt.Errorf("parser: channel %s: dialect %q is not served by %s", c.Name, c.Dialect, e.plugin.Name)
		}
		st := &channelState{cfg: c, dialect: d, allow: toSet(c.Allow), block: toSet(c.Block),
			budget: newBudget(lim.channelMemory, lim.sessionMemory)}
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
	releaseStartupMemory()
	return resp, nil
}

// limitMemory sets the parser's soft memory limit to what its channels'
// budgets allow, plus room for the runtime: the parser runs with a high
// GOGC (tail latency), which alone would let garbage grow to several times
// the bytes the budgets bound before a collection. GOMEMLIMIT, when set,
// wins.
func (e *ParserEngine) limitMemory(lim resolvedLimits, channels int) {
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

// ParseRequest answers one whole request (the seed's parse_request).
func (e *ParserEngine) ParseRequest(ctx context.Context, req *pb.ParseRequestRequest) (*pb.ParseRequestResponse, error) {
	d := e.dialect(req.Dialect)
	if d == nil {
		return nil, fmt.Errorf("parser: dialect %q is not served", req.Dialect)
	}
	st := &channelState{cfg: &pb.ChannelConfig{Name: "parse-request", Dialect: req.Dialect}, dialect: d,
		budget: newBudget(DefaultChannelMemoryMax, DefaultSessionMemoryMax)}
	caller := req.Caller
	if caller == nil {
		caller = &pb.Caller{Channel: st.cfg.Name, Dialect: req.Dialect, PeerPid: -1}
	}
	return &pb.ParseRequestResponse{Response: d.HandleMessage(ctx, e.newDispatcher(st, caller), req.Request)}, nil
}

func (e *ParserEngine) acceptFeeds(in *session.Inbox, st *channelState) {
	for {
		feed, err := in.Accept()
		if err != nil {
			return
		}
		go e.serveFeed(feed, st)
	}
}

// serveFeed receives sessions and host events from one exchange connection.
func (e *ParserEngine) serveFeed(feed *session.Feed, st *channelState) {
	defer feed.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // the exchange went away: its sessions end with it
	persistent := map[string]*StreamSession{}
	var refused refusalLog
	for {
		ev, f, err := feed.Next()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				e.logger.Debug("inbox feed ended", "channel", st.cfg.Name, "error", err)
			}
			return
		}
		switch ev.Type {
		case session.EventHandoff:
			if st.sessions.Load() >= e.limits.maxSessions {
				refused.note(e.logger, st.cfg.Name, e.limits.maxSessions)
				f.Close()
				continue
			}
			caller := &pb.Caller{Channel: st.cfg.Name, Dialect: st.cfg.Dialect, PeerPid: -1, PeerUid: -1, PeerGid: -1}
			if ev.Peer != nil {
				caller.PeerPid, caller.PeerUid, caller.PeerGid = ev.Peer.PID, ev.Peer.UID, ev.Peer.GID
			}
			if ev.Kind == session.KindMessages {
				go e.serveMessages(ctx, st, f, caller)
				continue
			}
			if ev.Kind == session.KindListener {
				// Not tied to this feed: the exchange may now exit.
				go e.serveListener(st, f, ev)
				continue
			}
			s := e.newStreamSession(st, f, caller, ev)
			st.sessions.Add(1)
			if ev.WatchHost {
				// Not tied to this feed: the exchange is done with it.
				go e.watchHost(st, f, s)
				go e.serveStream(context.Background(), st, s)
				continue
			}
			if ev.Persistent {
				if old := persistent[ev.Session]; old != nil {
					old.cancel()
				}
				persistent[ev.Session] = s
			}
			go e.serveStream(ctx, st, s)
		case session.EventHostConnected, session.EventHostDisconnected:
			if s := persistent[ev.Session]; s != nil {
				s.hostEvent(ev.Type == session.EventHostConnected)
			}
		}
	}
}

// watchHost follows the host side of a handed-over virtio-serial port:
// virtio_console sends SIGIO to the descriptor's owner on every host connect
// and disconnect, and a zero-timeout poll tells the state (POLLHUP: no
// host). A waiting session learns of each change without polling.
func (e *ParserEngine) watchHost(st *channelState, f *os.File, s *StreamSession) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGIO) // before F_SETOWN: no change is missed
	defer signal.Stop(sig)
	rc, err := f.SyscallConn()
	if err != nil {
		e.logger.Error("virtio-serial port: no descriptor", "channel", st.cfg.Name, "error", err)
		return
	}
	poll := func() (up, data bool, err error) {
		cerr := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			for {
				// Signals (SIGIO itself, the runtime's SIGURG) interrupt.
				if _, err = unix.Poll(fds, 0); err != unix.EINTR {
					break
				}
			}
			if err == nil {
				up = fds[0].Revents&unix.POLLHUP == 0
				data = fds[0].Revents&unix.POLLIN != 0
			}
		})
		if cerr != nil {
			err = cerr
		}
		return
	}
	if cerr := rc.Control(func(fd uintptr) {
		_, err = unix.FcntlInt(fd, unix.F_SETOWN, os.Getpid())
	}); cerr != nil || err != nil {
		e.logger.Error("virtio-serial port: cannot take its SIGIO", "channel", st.cfg.Name, "error", errors.Join(cerr, err))
		return
	}
	up, _, err := poll()
	if err != nil {
		e.logger.Error("virtio-serial port: poll", "channel", st.cfg.Name, "error", err)
		return
	}
	if !up {
		s.hostEvent(false)
	}
	e.logger.Info("following the host of a handed-over virtio-serial port", "channel", st.cfg.Name, "host_connected", up)
	for {
		select {
		case <-sig:
		case <-s.done:
			return
		}
		now, data, err := poll()
		e.logger.Debug("virtio-serial SIGIO", "channel", st.cfg.Name, "host_connected", now, "data", data, "error", err)
		if err != nil {
			select {
			case <-s.done: // the session is over
			default:
				e.logger.Error("virtio-serial port: lost the host watch", "channel", st.cfg.Name, "error", err)
			}
			return
		}
		switch {
		case now != up:
			up = now
			e.logger.Debug("virtio-serial host state changed", "channel", st.cfg.Name, "host_connected", up)
			s.hostEvent(up)
		case up && data:
			// A disconnect and reconnect merged into one look while the
			// session waits after an EOF: wake it, it costs one read.
			s.hostEvent(true)
		case !up:
			// Still no host, yet something changed: a host may have
			// connected, written and gone between two looks. The read
			// finds its request, or an EOF at once (as the exchange's
			// watch does). up stays false: the next connect is a change.
			s.hostEvent(true)
		}
	}
}

// serveListener accepts connections on a listening socket an exchange
// handed over, doing what the exchange's accept loop did: the connection
// limit and the peer's credentials.
func (e *ParserEngine) serveListener(st *channelState, f *os.File, ev session.Event) {
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		e.logger.Error("handed-over listener unusable", "channel", st.cfg.Name, "error", err)
		return
	}
	ln, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		e.logger.Error("handed-over listener is not a unix socket", "channel", st.cfg.Name)
		return
	}
	ln.SetUnlinkOnClose(ev.ListenerPath != "")
	e.mu.Lock()
	e.listeners = append(e.listeners, ln)
	e.mu.Unlock()
	e.logger.Info("serving a handed-over listener", "channel", st.cfg.Name, "origin", ev.Origin, "max_connections", ev.MaxConnections)
	// The exchange's max_connections and the engine's max_sessions both
	// bound the connections served at once.
	limit := e.limits.maxSessions
	if ev.MaxConnections > 0 {
		limit = min(limit, int64(ev.MaxConnections))
	}
	var refused refusalLog
	var backoff dataplane.AcceptBackoff
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors: the connections that hold them end
			// some day, the channel must not.
			if backoff.Retry(err, nil) {
				e.logger.Warn("accept failed; retrying", "channel", st.cfg.Name, "error", err, "retry_in", backoff.Delay())
				continue
			}
			e.logger.Error("accept failed; channel stopped", "channel", st.cfg.Name, "error", err)
			return
		}
		backoff.Reset()
		if st.sessions.Load() >= limit {
			refused.note(e.logger, st.cfg.Name, limit)
			conn.Close()
			continue
		}
		caller := &pb.Caller{Channel: st.cfg.Name, Dialect: st.cfg.Dialect, PeerPid: -1, PeerUid: -1, PeerGid: -1}
		if peer, err := session.PeerOf(conn); err == nil {
			caller.PeerPid, caller.PeerUid, caller.PeerGid = peer.PID, peer.UID, peer.GID
		}
		dataplane.GrowSendBuffer(conn) // replies to file reads are megabytes
		s := e.newStreamSession(st, conn, caller, session.Event{Origin: ev.Origin})
		st.sessions.Add(1) // counted from here, so the next accept sees it
		go e.serveStream(context.Background(), st, s)
	}
}

// refusalLog logs refused connections without letting a peer that keeps
// connecting flood the log: one line, then a count every ten seconds.
type refusalLog struct {
	last  time.Time
	count int
}

func (r *refusalLog) note(logger hclog.Logger, channel string, limit int64) {
	r.count++
	if time.Since(r.last) < 10*time.Second {
		return
	}
	logger.Warn("connections refused: session limit reached", "channel", channel, "limit", limit, "refused", r.count)
	r.last, r.count = time.Now(), 0
}

// serveStream runs one session; the caller has counted it in st.sessions.
func (e *ParserEngine) serveStream(ctx context.Context, st *channelState, s *StreamSession) {
	defer st.sessions.Add(-1)
	ctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	defer cancel()
	go func() {
		<-ctx.Done()
		s.conn.Close() // unblocks the dialect's read
	}()
	defer close(s.done)
	e.logger.Debug("session started", "channel", st.cfg.Name, "origin", s.origin)
	if err := st.dialect.ServeStream(ctx, s); err != nil && ctx.Err() == nil {
		e.logger.Debug("session ended", "channel", st.cfg.Name, "origin", s.origin, "error", err)
	}
	s.wait()
	s.HoldPending(0)
	// The host that asked is gone (a virtio-serial host may come back and
	// read the same handle on: it must find the position it left).
	s.dropAhead()
	e.freeze.hostGone(s.dispatcher)
}

func (e *ParserEngine) serveMessages(ctx context.Context, st *channelState, f *os.File, caller *pb.Caller) {
	mc, err := session.NewMessageConn(f)
	f.Close()
	if err != nil {
		e.logger.Error("message session refused", "channel", st.cfg.Name, "error", err)
		return
	}
	defer mc.Close()
	go func() {
		<-ctx.Done()
		mc.Close()
	}()
	d := e.newDispatcher(st, caller)
	defer e.freeze.hostGone(d)
	sem := make(chan struct{}, e.limits.maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		id, payload, err := mc.Read()
		if err != nil {
			return
		}
		req := append([]byte(nil), payload...)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if reply := st.dialect.HandleMessage(ctx, d, req); reply != nil {
				if err := mc.Write(id, reply); err != nil {
					e.logger.Warn("reply lost", "channel", st.cfg.Name, "error", err)
				}
			}
		}()
	}
}

// dispatcher implements Dispatcher for one session.
type dispatcher struct {
	e      *ParserEngine
	st     *channelState
	caller *pb.Caller

	// readAhead: the session reads ahead (stream sessions; see readahead.go).
	readAhead bool
	aheadMu   sync.Mutex
	aheads    []*aheadBatch // at most two, the second carrying on from the first
	closed    bool          // the session ended: no new read-ahead
}

func (e *ParserEngine) newDispatcher(st *channelState, caller *pb.Caller) *dispatcher {
	return &dispatcher{e: e, st: st, caller: caller}
}

func (d *dispatcher) Caller() *pb.Caller   { return d.caller }
func (d *dispatcher) Logger() hclog.Logger { return d.e.logger }

func (d *dispatcher) AgentVersion() string {
	d.e.mu.RLock()
	defer d.e.mu.RUnlock()
	if d.e.cfg == nil || d.e.cfg.AgentVersion == "" {
		return "unknown"
	}
	return d.e.cfg.AgentVersion
}

func (d *dispatcher) Commands() []CommandInfo {
	d.e.awaitRoutes(context.Background())
	d.e.mu.RLock()
	defer d.e.mu.RUnlock()
	out := make([]CommandInfo, 0, len(d.e.routes)+len(coreCommands))
	for _, c := range coreCommands {
		out = append(out, CommandInfo{Name: c, Enabled: d.st.enabled(c), SuccessResponse: true})
	}
	// While frozen, what is refused is listed disabled, as qemu-ga does.
	frozen := d.e.freeze.isFrozen()
	for _, r := range d.e.routes {
		if !servesDialect(r, d.st.cfg.Dialect) {
			continue
		}
		enabled := r.Enabled && d.st.enabled(r.Command) && (!frozen || r.GetSpec().GetAllowedWhileFrozen())
		out = append(out, CommandInfo{Name: r.Command, Enabled: enabled, SuccessResponse: r.GetSpec().GetSuccessResponse()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func errOutcome(class, format string, args ...any) *Outcome {
	return &Outcome{Err: &pb.Error{Class: class, Desc: fmt.Sprintf(format, args...)}}
}

// Dispatch runs one command.
func (d *dispatcher) Dispatch(ctx context.Context, command string, args json.RawMessage) *Outcome {
	o, next := d.dispatch(ctx, command, args)
	if next != nil {
		next()
	}
	return o
}

// dispatch runs one command; next, when not nil, starts the read-ahead of
// the host's likely next request: call it once the reply is on its way.
func (d *dispatcher) dispatch(ctx context.Context, command string, args json.RawMessage) (o *Outcome, next func()) {
	d.e.mu.RLock()
	route := d.e.routes[command]
	timeout := d.e.limits.commandTimeout
	readAheadMax := d.e.limits.readAheadMax
	pending := d.e.routesReady != nil
	d.e.mu.RUnlock()
	if route == nil && pending && !isCore(command) {
		d.e.awaitRoutes(ctx)
		d.e.mu.RLock()
		route = d.e.routes[command]
		d.e.mu.RUnlock()
	}

	if o := d.refusal(command, route); o != nil {
		return o, nil
	}
	if isCore(command) {
		return d.core(command, args), nil
	}
	spec := route.GetSpec()
	req := &pb.RunRequest{Command: command, ArgsJson: argsObject(args), Caller: d.caller}
	if spec.GetBlobArg() != "" {
		if o := extractBlobArg(req, spec.BlobArg, &d.e.blobPool); o != nil {
			return o, nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var resp *pb.RunResponse
	if d.readAhead {
		if b := d.takeAhead(route.Plugin, command, req.ArgsJson); b != nil {
			var r *pb.ReadAheadResult
			if o, r = d.claimAhead(ctx, b); o != nil {
				resp = &pb.RunResponse{ResultJson: r.ResultJson, More: r.More}
			}
		}
	}
	if o == nil {
		var release func()
		var err error
		req.DeadlineUnixNano = time.Now().Add(timeout).UnixNano()
		resp, release, err = d.e.call(ctx, route.Plugin, req)
		if spec.GetBlobArg() != "" {
			d.e.blobPool.Put(req.Blob) // written to the plugin by now
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return errOutcome(ClassGenericError, "command %s timed out after %s", command, timeout), nil
			}
			return errOutcome(ClassGenericError, "command %s failed: %v", command, err), nil
		}
		o = &Outcome{Result: resp.ResultJson, Release: release}
	}
	d.e.freeze.record(resp.FreezeState, d)
	if resp.Error != nil {
		o.Done()
		return &Outcome{Err: resp.Error}, nil
	}
	o.NoResponse = resp.NoResponse
	if spec.GetBlobResult() != "" {
		o.BlobField = spec.BlobResult
		if o.Blob == nil {
			o.Blob = resp.Blob
		}
		if o.Blob == nil {
			o.Blob = []byte{}
		}
	}
	if len(o.Blob) >= bulkSize || len(req.Blob) >= bulkSize {
		d.e.memory.bulkDone()
	}
	if d.readAhead && spec.GetReadAhead() && resp.More {
		blobSize := len(o.Blob)
		next = func() { d.readOn(route.Plugin, spec.GetBlobResult(), req, blobSize, readAheadMax) }
	}
	return o, next
}

// refusal is the outcome of a command that will not run here: unknown on
// this channel's dialect, disabled, or refused while frozen; nil when it
// may run. It needs no plugin, so a session answers it at once, in order.
func (d *dispatcher) refusal(command string, route *pb.Route) *Outcome {
	core := isCore(command)
	if route != nil && !servesDialect(route, d.st.cfg.Dialect) {
		route = nil // another dialect's command: unknown here
	}
	if !core && route == nil {
		return errOutcome(ClassCommandNotFound, "The command %s has not been found", command)
	}
	if !d.st.enabled(command) || (route != nil && !route.Enabled) {
		return errOutcome(ClassCommandNotFound, "Command %s has been disabled", command)
	}
	if !core && d.e.freeze.isFrozen() && !route.GetSpec().GetAllowedWhileFrozen() {
		return errOutcome(ClassCommandNotFound, "Command %s has been disabled: the agent is in frozen state", command)
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

func isCore(command string) bool {
	for _, c := range coreCommands {
		if c == command {
			return true
		}
	}
	return false
}

func (d *dispatcher) core(command string, args json.RawMessage) *Outcome {
	switch command {
	case "guest-ping":
		var none struct{}
		if err := DecodeArgs(args, &none); err != nil {
			return &Outcome{Err: toProtoError(err)}
		}
		return &Outcome{Result: json.RawMessage(`{}`)}
	case "guest-sync", "guest-sync-delimited":
		var a struct {
			ID int64 `json:"id"`
		}
		if err := DecodeArgs(args, &a); err != nil {
			return &Outcome{Err: toProtoError(err)}
		}
		return &Outcome{Result: json.RawMessage(fmt.Sprint(a.ID))}
	default: // guest-info
		var none struct{}
		if err := DecodeArgs(args, &none); err != nil {
			return &Outcome{Err: toProtoError(err)}
		}
		type entry struct {
			Enabled         bool   `json:"enabled"`
			Name            string `json:"name"`
			SuccessResponse bool   `json:"success-response"`
		}
		cmds := d.Commands()
		list := make([]entry, len(cmds))
		for i, c := range cmds {
			list[i] = entry{c.Enabled, c.Name, c.SuccessResponse}
		}
		b, _ := json.Marshal(struct {
			Version           string  `json:"version"`
			SupportedCommands []entry `json:"supported_commands"`
		}{d.AgentVersion(), list})
		return &Outcome{Result: b}
	}
}

// extractBlobArg moves a base64 argument out of the JSON into req.Blob,
// decoded strictly, so the command plugin receives raw bytes. The member is
// left in the arguments as an empty string, so the plugin still tells a
// missing argument from an empty one.
func extractBlobArg(req *pb.RunRequest, member string, pool *dataplane.BufferPool) *Outcome {
	members, err := SplitObject(req.ArgsJson)
	if err != nil {
		return errOutcome(ClassGenericError, "QMP input member 'arguments' must be an object")
	}
	idx := -1
	for i, m := range members {
		if m.Key == member {
			idx = i
		}
	}
	if idx < 0 {
		return nil // the plugin reports the missing parameter
	}
	text, ok := StringValue(members[idx].Value)
	if !ok {
		return errOutcome(ClassGenericError, "Invalid parameter type for '%s', expected: string", member)
	}
	blob := pool.Get(base64.StdEncoding.DecodedLen(len(text)))
	n, err := DecodeBase64Strict(blob, text)
	if err != nil {
		pool.Put(blob)
		return errOutcome(ClassGenericError, "Base64 data contains invalid characters")
	}
	// Rebuild the (small) rest of the arguments around an empty string.
	args := make([]byte, 0, 64)
	args = append(args, '{')
	for i, m := range members {
		if i > 0 {
			args = append(args, ',')
		}
		// JSON's quoting, not Go's: strconv writes \x01 and \a, which are
		// not JSON, so the plugin would refuse the whole object.
		key, _ := json.Marshal(m.Key)
		args = append(args, key...)
		args = append(args, ':')
		if i == idx {
			args = append(args, `""`...)
		} else {
			args = append(args, m.Value...)
		}
	}
	args = append(args, '}')
	req.ArgsJson, req.Blob = args, blob[:n]
	return nil
}

// call runs req on the named plugin's data plane, dialling (and asking the
// supervisor to start the plugin) when needed.
func (e *ParserEngine) call(ctx context.Context, pluginName string, req *pb.RunRequest) (*pb.RunResponse, func(), error) {
	e.mu.RLock()
	pc := e.plugins[pluginName]
	e.mu.RUnlock()
	if pc == nil {
		return nil, nil, fmt.Errorf("no route to plugin %s", pluginName)
	}
	var resp *pb.RunResponse
	for attempt := 0; ; attempt++ {
		c, err := pc.client(ctx)
		if err != nil {
			return nil, nil, err
		}
		resp, err = c.Call(ctx, req)
		if err != nil {
			e.logger.Debug("data plane call failed", "plugin", pluginName, "attempt", attempt, "error", err)
		}
		if errors.Is(err, dataplane.ErrNotDelivered) && attempt < 2 {
			continue // the plugin had gone before we sent: try its successor
		}
		if err != nil {
			return resp, nil, wrapLost(pluginName, err)
		}
		blob := resp.Blob
		return resp, func() { c.Release(blob) }, nil
	}
}

func wrapLost(pluginName string, err error) error {
	if errors.Is(err, dataplane.ErrConnectionLost) {
		return fmt.Errorf("plugin %s exited while running the command; it is being restarted", pluginName)
	}
	return err
}

type pluginConn struct {
	name   string
	engine *ParserEngine

	mu     sync.Mutex
	socket string
	conn   *dataplane.Client
	// lost: the last connection broke, so the plugin died or is dying;
	// the supervisor is asked before redialling.
	lost bool
}

func (pc *pluginConn) setSocket(socket string) {
	pc.mu.Lock()
	pc.socket = socket
	pc.mu.Unlock()
}

// current returns the live connection, if any, without dialling.
func (pc *pluginConn) current() *dataplane.Client {
	if pc == nil {
		return nil
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.conn == nil {
		return nil
	}
	select {
	case <-pc.conn.Done():
		return nil
	default:
		return pc.conn
	}
}

func (pc *pluginConn) client(ctx context.Context) (*dataplane.Client, error) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.conn != nil {
		select {
		case <-pc.conn.Done():
			pc.conn, pc.lost = nil, true
		default:
			return pc.conn, nil
		}
	}
	deadline := time.Now().Add(pluginRestartWaitBudget)
	for {
		if pc.socket != "" && !(pc.lost && pc.engine.hostClient() != nil) {
			c, err := dataplane.Dial(ctx, pc.socket)
			if err == nil {
				pc.conn = c
				return c, nil
			}
		}
		// Not running (lazy start) or being restarted: ask the supervisor,
		// which starts it or waits for its restart.
		host := pc.engine.hostClient()
		if host == nil {
			return nil, fmt.Errorf("plugin %s is not running", pc.name)
		}
		resp, err := host.EnsureStarted(ctx, &pb.EnsureStartedRequest{Plugin: pc.name, ConnectionLost: pc.lost})
		if err == nil {
			pc.socket, pc.lost = resp.DataplaneSocket, false
			c, err := dataplane.Dial(ctx, pc.socket)
			if err == nil {
				pc.conn = c
				return c, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("plugin %s is not available: %v", pc.name, err)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (e *ParserEngine) hostClient() pb.HostClient {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.host
}

// StreamSession is one byte-stream session given to Dialect.ServeStream.
type StreamSession struct {
	*dispatcher
	conn       io.ReadWriteCloser
	origin     string
	persistent bool
	cancel     context.CancelFunc

	wmu sync.Mutex
	// epoch counts the host's resynchronisations (guest-sync,
	// guest-sync-delimited). A reply is
	// written only in the epoch its request arrived in: the host has given
	// up on the others, and would take a late one for the answer to a later
	// request. Changed under wmu, so no stale reply follows a sync's.
	epoch atomic.Uint64
	// hostEpoch counts the EOFs of a persistent session (WaitHost): a
	// reply other than a sync's is written only in the one its request
	// arrived in.
	hostEpoch atomic.Uint64

	hostMu   sync.Mutex
	hostUp   bool
	hostGen  uint64
	hostCh   chan struct{} // closed and replaced on every host event
	lastGen  uint64
	inflight chan struct{}
	// hold counts what the session holds against its memory budget;
	// pending is the partial request's share (HoldPending), over whether
	// the session is paused.
	hold      sessionHold
	pending   int64
	over      atomic.Bool
	done      chan struct{} // closed when the session ends
	wg        sync.WaitGroup
	queuesMu  sync.Mutex
	queues    map[string]*pluginQueue
	maxReqLen int64
}

// pluginQueue runs one plugin's commands of a session in arrival order.
type pluginQueue struct {
	jobs    chan func()
	waiting atomic.Int32 // queued or running
}

func (e *ParserEngine) newStreamSession(st *channelState, conn io.ReadWriteCloser, caller *pb.Caller, ev session.Event) *StreamSession {
	e.mu.RLock()
	lim := e.limits
	e.mu.RUnlock()
	d := e.newDispatcher(st, caller)
	d.readAhead = lim.readAheadMax > 0
	return &StreamSession{
		dispatcher: d,
		conn:       conn,
		origin:     ev.Origin,
		persistent: ev.Persistent,
		hostUp:     true,
		hostCh:     make(chan struct{}),
		inflight:   make(chan struct{}, lim.maxInFlight),
		hold:       sessionHold{b: st.budget},
		done:       make(chan struct{}),
		queues:     map[string]*pluginQueue{},
		maxReqLen:  lim.maxRequest,
		cancel:     func() {},
	}
}

// Read reads from the session.
func (s *StreamSession) Read(p []byte) (int, error) { return s.conn.Read(p) }

// Write writes one whole reply; replies from concurrent commands never
// interleave.
func (s *StreamSession) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writeParts([][]byte{p}); err != nil {
		s.writeStalled(err)
		return 0, err
	}
	return len(p), nil
}

// WriteBuffers writes one whole reply given in parts (with one writev on a
// socket); like Write, it never interleaves with another reply.
func (s *StreamSession) WriteBuffers(parts net.Buffers) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var n int64
	for _, p := range parts {
		n += int64(len(p))
	}
	if err := s.writeParts(parts); err != nil {
		s.writeStalled(err)
		return 0, err
	}
	return n, nil
}

// WriteReply writes the reply to the outcome of Go, given in parts, unless
// the host resynchronised or reconnected since its request arrived: then
// the reply is dropped (written reports false), as the host gave up on it.
func (s *StreamSession) WriteReply(o *Outcome, parts ...[]byte) (written bool, err error) {
	// The reply counts against the budget while it waits for the replies
	// ahead of it, too.
	var size int64
	for _, p := range parts {
		size += int64(len(p))
	}
	s.hold.add(size)
	defer s.hold.add(-size)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if o.epoch != s.epoch.Load() {
		s.Logger().Debug("reply dropped: the host resynchronised since its request", "origin", s.origin)
		return false, nil
	}
	if !o.isSync && o.hostEpoch != s.hostEpoch.Load() {
		s.Logger().Debug("reply dropped: the host that asked went away", "origin", s.origin)
		return false, nil
	}
	err = s.writeParts(parts)
	if err != nil {
		s.writeStalled(err)
	}
	return err == nil, err
}

// newEpoch starts a new epoch: replies to the requests that arrived before
// are not written any more (see WriteReply).
func (s *StreamSession) newEpoch() {
	s.wmu.Lock()
	s.epoch.Add(1)
	s.wmu.Unlock()
}

// Buffers is the pool a dialect takes its large request and reply buffers
// from; the engine gives its memory back to the system once idle.
func (s *StreamSession) Buffers() *dataplane.BufferPool { return &s.e.dialectPool }

// MaxRequestBytes is the configured limit on one request.
func (s *StreamSession) MaxRequestBytes() int64 { return s.maxReqLen }

// Persistent reports whether the session outlives host disconnects
// (virtio-serial): on EOF call WaitHost instead of ending.
func (s *StreamSession) Persistent() bool { return s.persistent }

// WaitHost blocks after an EOF on a persistent session until the host may be
// back. It returns at once when a host event arrived since the last call,
// so an EOF can never turn into a busy loop and a reconnect is never missed.
func (s *StreamSession) WaitHost(ctx context.Context) error {
	// The EOF closed the host's connection: whatever it asked and is
	// still running is answered to nobody, never to the next host. Host
	// events come from another process and could not draw this line.
	// The EOF itself is not exact either: virtio_console applies a host's
	// "port open" from a work queue, after the data that followed it may
	// already have been read, so an EOF can come after the next host's
	// first request. Hosts begin with a sync and wait for its reply:
	// sync replies are kept across EOFs (hostEpoch), only a later sync
	// drops them.
	s.wmu.Lock()
	s.hostEpoch.Add(1)
	s.wmu.Unlock()
	for {
		s.hostMu.Lock()
		if s.hostGen != s.lastGen && s.hostUp {
			s.lastGen = s.hostGen
			s.hostMu.Unlock()
			return nil
		}
		s.lastGen = s.hostGen
		ch := s.hostCh
		s.hostMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *StreamSession) hostEvent(up bool) {
	// No new epoch here: the event comes from another process and may
	// arrive after the new host's first request was read, whose reply
	// would then be dropped. Hosts sync first, and the sync is the
	// barrier.
	if !up {
		s.e.freeze.hostGone(s.dispatcher)
	}
	s.hostMu.Lock()
	s.hostUp = up
	s.hostGen++
	close(s.hostCh)
	s.hostCh = make(chan struct{})
	s.hostMu.Unlock()
}

// Go runs a command without blocking the session's reader: core commands run
// at once in the caller; commands of one plugin run one after another in the
// order they arrived (a pipelining client's writes to one file stay in
// order), and different plugins run side by side, so a slow command never
// holds up a ping. done receives the outcome, to be written with
// WriteReply. Go blocks while the session has its limit of commands in
// flight.
//
// guest-sync and guest-sync-delimited are barriers: once Go returns for
// one, no reply to a request that arrived before it is written (their
// commands still run; their replies are dropped).
func (s *StreamSession) Go(ctx context.Context, command string, args json.RawMessage, done func(*Outcome)) {
	isSync := command == "guest-sync" || command == "guest-sync-delimited"
	if isSync {
		s.newEpoch()
	}
	epoch, hostEpoch := s.epoch.Load(), s.hostEpoch.Load()
	// The request counts against the memory budget until its reply is
	// written or dropped.
	held := int64(len(args))
	s.hold.add(held)
	arrived := done
	done = func(o *Outcome) {
		o.epoch, o.hostEpoch, o.isSync = epoch, hostEpoch, isSync
		arrived(o)
		s.hold.add(-held)
	}
	s.e.mu.RLock()
	route := s.e.routes[command]
	routesPending := s.e.routesReady != nil
	s.e.mu.RUnlock()
	// guest-info waits while the routes are being learnt: not on the
	// reader, or a sync behind it would wait too.
	if isCore(command) && !(command == "guest-info" && routesPending) {
		done(s.Dispatch(ctx, command, args))
		return
	}
	// A command refused without a plugin is answered at once, before
	// anything that follows it (an unknown command, then a sync).
	if route != nil || !routesPending {
		if o := s.refusal(command, route); o != nil {
			done(o)
			return
		}
	}
	key := ""
	if route != nil {
		key = route.Plugin
	}
	s.queuesMu.Lock()
	q := s.queues[key]
	if q == nil {
		q = &pluginQueue{jobs: make(chan func(), cap(s.inflight))}
		s.queues[key] = q
		go q.run(ctx)
	}
	s.queuesMu.Unlock()

	run := func() {
		o, next := s.dispatch(ctx, command, args)
		done(o)
		if next != nil {
			next()
		}
	}
	// The reply to a request a read-ahead run answers is ready: write it
	// from here rather than wake another thread for it. Only when nothing
	// of this plugin is queued before it, so the order holds.
	if q.waiting.Load() == 0 && s.readAhead && s.peekAhead(command, argsObject(args)) {
		run()
		return
	}
	select {
	case s.inflight <- struct{}{}:
	case <-ctx.Done():
		s.hold.add(-held)
		return
	}
	s.wg.Add(1)
	q.waiting.Add(1)
	q.jobs <- func() {
		defer func() { q.waiting.Add(-1); <-s.inflight; s.wg.Done() }()
		run()
	}
}

func (q *pluginQueue) run(ctx context.Context) {
	for {
		select {
		case job := <-q.jobs:
			job()
		case <-ctx.Done():
			// drain what was queued so wait() returns
			for {
				select {
				case job := <-q.jobs:
					job()
				default:
					return
				}
			}
		}
	}
}

// wait waits for commands still running when the session ends.
func (s *StreamSession) wait() { s.wg.Wait() }

// Origin describes where the session comes from, for logs.
func (s *StreamSession) Origin() string { return s.origin }
