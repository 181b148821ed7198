package engine

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/session"
)

// serveStream runs one session; the caller has counted it in st.sessions.
func (e *Engine) serveStream(ctx context.Context, st *channelState, s *streamSession) {
	defer st.sessions.Add(-1)
	ctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.ending = ctx.Done()
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
	e.memory.BulkDone()
}

// streamSession is one byte-stream session given to Dialect.ServeStream
// (dialect.StreamSession).
type streamSession struct {
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
	hold    sessionHold
	pending int64
	over    atomic.Bool
	done    chan struct{} // closed when the session ends
	// ending is closed when the session is ending (its context): replies
	// waiting for their turn (order) stop waiting.
	ending    <-chan struct{}
	order     replyOrder
	wg        sync.WaitGroup
	queuesMu  sync.Mutex
	queues    map[string]*pluginQueue
	maxReqLen int64
}

func (e *Engine) newStreamSession(st *channelState, conn io.ReadWriteCloser, caller *pb.Caller, ev session.Event) *streamSession {
	e.mu.RLock()
	lim := e.limits
	e.mu.RUnlock()
	d := e.newDispatcher(st, caller)
	d.readAhead = lim.readAheadMax > 0
	return &streamSession{
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
func (s *streamSession) Read(p []byte) (int, error) { return s.conn.Read(p) }

// Write writes one whole reply; replies from concurrent commands never
// interleave. In an ordered session it takes its place after the replies
// to the requests read so far.
func (s *streamSession) Write(p []byte) (int, error) {
	if s.st.ordered {
		seq := s.order.take()
		s.order.wait(seq, s.ending)
		defer s.order.finish(seq)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writeParts([][]byte{p}); err != nil {
		s.writeStalled(err)
		return 0, err
	}
	return len(p), nil
}

// WriteBuffers writes one whole reply given in parts (with one writev on a
// socket); like Write, it never interleaves with another reply, and in an
// ordered session it takes its place as Write does.
func (s *streamSession) WriteBuffers(parts net.Buffers) (int64, error) {
	if s.st.ordered {
		seq := s.order.take()
		s.order.wait(seq, s.ending)
		defer s.order.finish(seq)
	}
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
// In an ordered session it first waits for the replies to the requests
// before it.
func (s *streamSession) WriteReply(o *dialect.Outcome, parts ...[]byte) (written bool, err error) {
	// The reply counts against the budget while it waits for the replies
	// ahead of it, too.
	var size int64
	for _, p := range parts {
		size += int64(len(p))
	}
	s.hold.add(size)
	defer s.hold.add(-size)
	if o.Place.Seq != 0 {
		s.order.wait(o.Place.Seq, s.ending)
		defer s.order.finish(o.Place.Seq)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if o.Place.Epoch != s.epoch.Load() {
		s.Logger().Debug("reply dropped: the host resynchronised since its request", "origin", s.origin)
		return false, nil
	}
	if !o.Place.Barrier && o.Place.HostEpoch != s.hostEpoch.Load() {
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
func (s *streamSession) newEpoch() {
	s.wmu.Lock()
	s.epoch.Add(1)
	s.wmu.Unlock()
}

// Buffers is the pool a dialect takes its large request and reply buffers
// from; the engine gives its memory back to the system once idle.
func (s *streamSession) Buffers() *dataplane.BufferPool { return &s.e.dialectPool }

// MaxRequestBytes is the configured limit on one request.
func (s *streamSession) MaxRequestBytes() int64 { return s.maxReqLen }

// Persistent reports whether the session outlives host disconnects
// (virtio-serial): on EOF call WaitHost instead of ending.
func (s *streamSession) Persistent() bool { return s.persistent }

// WaitHost blocks after an EOF on a persistent session until the host may be
// back. It returns at once when a host event arrived since the last call,
// so an EOF can never turn into a busy loop and a reconnect is never missed.
func (s *streamSession) WaitHost(ctx context.Context) error {
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

func (s *streamSession) hostEvent(up bool) {
	// No new epoch here: the event comes from another process and may
	// arrive after the new host's first request was read, whose reply
	// would then be dropped. Hosts sync first, and the sync is the
	// barrier.
	if !up {
		s.e.freeze.hostGone(s.dispatcher)
		// Idle may begin: what the host's work brought in goes back.
		s.e.memory.BulkDone()
	}
	s.hostMu.Lock()
	s.hostUp = up
	s.hostGen++
	close(s.hostCh)
	s.hostCh = make(chan struct{})
	s.hostMu.Unlock()
}

// wait waits for commands still running when the session ends.
func (s *streamSession) wait() { s.wg.Wait() }

// Origin describes where the session comes from, for logs.
func (s *streamSession) Origin() string { return s.origin }
