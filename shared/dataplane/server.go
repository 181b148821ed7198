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
// connections and keeps count of them, so that the plugin can tell when no
// parser needs it any more (Retire).
type Server struct {
	Handler Handler
	Logger  hclog.Logger

	// served counts request frames read: Retire's proof that nothing ran
	// while it asked the plugin whether it is busy.
	served atomic.Uint64

	mu      sync.Mutex
	ln      net.Listener
	conns   int
	changed chan struct{} // closed and replaced when conns changes
	retired bool
}

// Serve accepts parser connections on ln until ctx ends, ln fails or the
// server retires.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
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
		s.count(+1)
		go func() {
			defer s.count(-1)
			serveConn(ctx, conn, s.Handler, s.Logger, &s.served)
		}()
	}
}

func (s *Server) count(delta int) {
	s.mu.Lock()
	s.conns += delta
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// Retire closes the listener for good once no parser connection is open
// and idle reports the plugin idle (an empty reason), so that no request
// can reach the plugin after it agreed to leave. It waits up to wait for
// connections a parser has just closed to be seen closed. A parser that
// dials afterwards is refused and asks the supervisor, which starts a new
// process. It returns why the plugin stays, or "" when it retired.
func (s *Server) Retire(wait time.Duration, idle func() string) string {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		if s.ln == nil || s.retired {
			s.mu.Unlock()
			return "no data plane"
		}
		if s.conns == 0 {
			served := s.served.Load()
			s.mu.Unlock()
			// Outside the lock: the plugin's own busy check may take
			// its own locks. A request in between shows in served.
			if why := idle(); why != "" {
				return why
			}
			s.mu.Lock()
			if s.conns == 0 && s.served.Load() == served {
				s.retired = true
				s.ln.Close()
				s.mu.Unlock()
				return ""
			}
			s.mu.Unlock()
			continue
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			return "a parser is connected"
		}
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

func serveConn(ctx context.Context, conn net.Conn, h Handler, logger hclog.Logger, served *atomic.Uint64) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer conn.Close()
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	sc := &serverConn{conn: conn, cancel: cancel, logger: logger, tickets: map[uint64]*Ticket{}}
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
		served.Add(1)
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
			if reply.Done != nil {
				reply.Done()
			}
		}()
	}
}
