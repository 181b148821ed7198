package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

// Handler runs one request. It is called concurrently; it must not keep
// req.Blob after returning (the buffer is recycled).
type Handler func(ctx context.Context, req *pb.RunRequest) Answer

// Answer is a handler's answer on the data plane (sdk.Reply is what a
// command's handler returns; the SDK turns it into an Answer).
type Answer struct {
	Resp *pb.RunResponse
	// Blobs, when not nil, is the frame's blob in parts (a read-ahead run's
	// results), sent with one writev in place of Resp.Blob.
	Blobs [][]byte
	// Done, if not nil, is called once the response has been written (its
	// blobs may be recycled then).
	Done func()
}

// Serve accepts parser connections on ln and runs their requests with h until
// ctx ends or ln fails. Requests on one connection run concurrently, so a slow
// command never holds up the next one.
func Serve(ctx context.Context, ln net.Listener, h Handler, logger hclog.Logger) error {
	return (&Server{Handler: h, Logger: logger}).Serve(ctx, ln)
}

// Server is a command plugin's side of the data plane: it accepts parser
// connections and keeps count of what runs on them, so that the plugin can
// tell when nothing needs it (Retire).
type Server struct {
	Handler Handler
	Logger  hclog.Logger

	// served counts request frames read, running the ones in progress:
	// Retire's proof that nothing ran while it asked the plugin whether it
	// is busy, and that nothing runs.
	served  atomic.Uint64
	running atomic.Int64

	mu      sync.Mutex
	ln      net.Listener
	conns   map[*serverConn]struct{}
	retired bool
}

// Serve accepts parser connections on ln until ctx ends, ln fails or the
// server retires.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	var backoff AcceptBackoff
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if backoff.Retry(err, ctx.Done()) {
				s.Logger.Warn("data plane accept failed; retrying", "error", err, "retry_in", backoff.Delay())
				continue
			}
			return fmt.Errorf("dataplane: accept: %w", err)
		}
		backoff.Reset()
		GrowSendBuffer(conn)
		go serveConn(ctx, conn, s.Handler, s.Logger, s)
	}
}

func (s *Server) track(sc *serverConn, open bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = map[*serverConn]struct{}{}
	}
	if open {
		s.conns[sc] = struct{}{}
	} else {
		delete(s.conns, sc)
	}
}

// quiet reports whether nothing runs and no read-ahead run waits to be
// settled on any connection: a parser still connected but idle holds no
// state the plugin would lose.
func (s *Server) quiet() bool {
	if s.running.Load() != 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		sc.mu.Lock()
		n := len(sc.tickets)
		sc.mu.Unlock()
		if n > 0 {
			return false
		}
	}
	return true
}

// retirePoll is how often Retire looks again while a request finishes.
const retirePoll = 10 * time.Millisecond

// Retire closes the listener for good once nothing runs, no read-ahead run
// is unsettled and idle reports the plugin idle (an empty reason), so that
// no new parser connection reaches the plugin after it agreed to leave; the
// plugin is then stopped, and a parser's idle connection simply ends. It
// waits up to wait for requests in progress to finish. It returns why the
// plugin stays, or "" when it retired.
func (s *Server) Retire(wait time.Duration, idle func() string) string {
	deadline := time.Now().Add(wait)
	for {
		s.mu.Lock()
		gone := s.ln == nil || s.retired
		s.mu.Unlock()
		if gone {
			return "no data plane"
		}
		if s.quiet() {
			served := s.served.Load()
			// Outside the lock: the plugin's own busy check may take
			// its own locks. A request in between shows in served.
			if why := idle(); why != "" {
				return why
			}
			s.mu.Lock()
			if s.served.Load() == served && s.running.Load() == 0 {
				s.retired = true
				s.ln.Close()
				s.mu.Unlock()
				return ""
			}
			s.mu.Unlock()
		}
		if time.Now().After(deadline) {
			return "a command is running"
		}
		time.Sleep(retirePoll)
	}
}

// serverConn is one parser's connection, as the plugin sees it.
type serverConn struct {
	conn     net.Conn
	cancel   context.CancelFunc
	logger   hclog.Logger
	wmu      sync.Mutex
	wscratch []byte

	mu      sync.Mutex
	tickets map[uint64]*Ticket // read-ahead runs not settled yet
}

// respond writes one frame to the parser: resp, and as its blob either the
// parts in blobs or resp.Blob.
func (sc *serverConn) respond(resp *pb.RunResponse, blobs [][]byte) {
	if blobs == nil && len(resp.Blob) > 0 {
		blobs = [][]byte{resp.Blob}
	}
	resp.Blob = nil
	sc.wmu.Lock()
	var err error
	sc.wscratch, err = writeFrame(sc.conn, resp, blobs, sc.wscratch)
	sc.wmu.Unlock()
	if err != nil {
		sc.logger.Debug("dataplane: reply lost", "error", err)
		sc.cancel()
	}
}

// settle applies the parser's word on a read-ahead run. It runs on the read
// loop, so it is in effect before any later request of this connection.
func (sc *serverConn) settle(s *pb.ReadAheadSettled) {
	sc.mu.Lock()
	t := sc.tickets[s.Token]
	delete(sc.tickets, s.Token)
	sc.mu.Unlock()
	if t != nil {
		t.settle(s.Claimed, false)
	}
}

// loseAll settles the runs of a connection that ended as lost: nobody can
// say any more how many results their host got.
func (sc *serverConn) loseAll() {
	sc.mu.Lock()
	tickets := sc.tickets
	sc.tickets = nil
	sc.mu.Unlock()
	for _, t := range tickets {
		t.settle(0, true)
	}
}

func serveConn(ctx context.Context, conn net.Conn, h Handler, logger hclog.Logger, srv *Server) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer conn.Close()
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	sc := &serverConn{conn: conn, cancel: cancel, logger: logger, tickets: map[uint64]*Ticket{}}
	srv.track(sc, true)
	defer srv.track(sc, false)
	defer sc.loseAll()
	r := bufio.NewReaderSize(conn, 64<<10)
	var rscratch []byte
	var pool BufferPool
	for {
		req := &pb.RunRequest{}
		var blob []byte
		var err error
		rscratch, blob, err = readFrame(r, req, rscratch, &pool)
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				logger.Warn("dataplane: connection dropped", "error", err)
			}
			return
		}
		if req.Settled != nil {
			sc.settle(req.Settled)
			pool.Put(blob)
			continue
		}
		req.Blob = blob
		if srv != nil {
			srv.served.Add(1)
			srv.running.Add(1)
		}
		runCtx := ctx
		if req.ReadAhead != 0 {
			t := &Ticket{conn: sc, token: req.ReadAhead, after: req.ReadAheadAfter, done: make(chan struct{})}
			sc.mu.Lock()
			sc.tickets[t.token] = t
			sc.mu.Unlock()
			runCtx = context.WithValue(ctx, ticketKey{}, t)
		}
		go func() {
			reply := h(runCtx, req)
			if blob != nil {
				pool.Put(blob)
			}
			resp := reply.Resp
			if resp == nil {
				resp = &pb.RunResponse{Error: &pb.Error{Class: "GenericError", Desc: "command returned no response"}}
			}
			resp.Id = req.Id
			sc.respond(resp, reply.Blobs)
			if srv != nil {
				srv.running.Add(-1)
			}
			if reply.Done != nil {
				reply.Done()
			}
		}()
	}
}
