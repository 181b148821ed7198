package qga

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
)

// Session is a connection on which several requests may be in flight at
// once: each carries an "id", which both guest-agent and qemu-ga echo, and
// a reader goroutine hands every reply to the request it answers. A
// virtio-serial chardev takes one host connection at a time, so whatever
// guestctl does at once with one guest (read output, write input, stop the
// command, pipeline file writes) goes through one Session.
type Session struct {
	conn net.Conn
	r    *bufio.Reader

	wmu sync.Mutex // one request written at a time

	mu      sync.Mutex
	next    uint64
	pending map[string]chan sessionReply
	err     error // why the reader stopped
	done    chan struct{}
}

type sessionReply struct {
	ret json.RawMessage
	err error
}

// Open dials the socket, resynchronises as libvirt does (unless noSync)
// and starts a Session on the connection.
func Open(ctx context.Context, socket string, noSync bool) (*Session, error) {
	c, err := Dial(ctx, socket, 0)
	if err != nil {
		return nil, err
	}
	if !noSync {
		// The handshake is bounded by ctx: a silent agent must not hang us.
		stop := context.AfterFunc(ctx, func() { _ = c.conn.Close() })
		err := c.Sync()
		if !stop() {
			err = fmt.Errorf("sync with %s: %w", socket, ctx.Err())
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	s := &Session{conn: c.conn, r: c.r, pending: map[string]chan sessionReply{}, done: make(chan struct{})}
	go s.readLoop()
	return s, nil
}

// Close closes the connection; calls in flight fail.
func (s *Session) Close() error { return s.conn.Close() }

// Done is closed when the connection is gone.
func (s *Session) Done() <-chan struct{} { return s.done }

func (s *Session) readLoop() {
	var err error
	for {
		var line []byte
		line, err = s.r.ReadBytes('\n')
		if err != nil {
			break
		}
		line = bytes.TrimLeft(line, "\xff")
		if id, ret, ok := bulkReply(line); ok {
			s.deliver(id, sessionReply{ret: ret})
			continue
		}
		var reply struct {
			ID     json.RawMessage `json:"id"`
			Return json.RawMessage `json:"return"`
			Error  *Error          `json:"error"`
		}
		if json.Unmarshal(line, &reply) != nil {
			continue // not a reply of ours (a stale partial line)
		}
		var id string
		if json.Unmarshal(reply.ID, &id) != nil {
			continue // a reply to a request of before our sync, or without id
		}
		r := sessionReply{ret: reply.Return}
		if reply.Error != nil {
			r.err = reply.Error
		} else if reply.Return == nil {
			r.err = fmt.Errorf("reply without return or error: %q", line)
		}
		s.deliver(id, r)
	}
	s.mu.Lock()
	s.err = fmt.Errorf("connection to the agent: %w", err)
	for id, ch := range s.pending {
		ch <- sessionReply{err: s.err}
		delete(s.pending, id)
	}
	s.mu.Unlock()
	close(s.done)
}

// deliver hands a reply to the call waiting for it, if it still waits.
func (s *Session) deliver(id string, r sessionReply) {
	s.mu.Lock()
	ch := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// bulkMin is the reply size from which bulkReply is tried.
const bulkMin = 64 << 10

// bulkReply takes a large success reply apart without scanning it, as
// {"return": VALUE, "id": "ID"} (both agents write the id last): a
// guest-file-read of a megabyte is otherwise decoded twice, once here and
// once by its caller, who decodes VALUE anyway. Anything of another shape
// is left to encoding/json.
func bulkReply(line []byte) (id string, ret json.RawMessage, ok bool) {
	if len(line) < bulkMin {
		return "", nil, false
	}
	rest, ok := bytes.CutPrefix(line, []byte(`{"return":`))
	if !ok {
		return "", nil, false
	}
	end := bytes.TrimRight(rest, " \r\n")
	end, ok = bytes.CutSuffix(end, []byte("}"))
	if !ok {
		return "", nil, false
	}
	end = bytes.TrimRight(end, " ")
	// The id: a plain string of ours, "gcN".
	if len(end) < 2 || end[len(end)-1] != '"' {
		return "", nil, false
	}
	q := bytes.LastIndexByte(end[:len(end)-1], '"')
	if q < 0 {
		return "", nil, false
	}
	id = string(end[q+1 : len(end)-1])
	if !strings.HasPrefix(id, "gc") {
		return "", nil, false
	}
	head := bytes.TrimRight(end[:q], " ")
	head, ok = bytes.CutSuffix(head, []byte(":"))
	if !ok {
		return "", nil, false
	}
	head = bytes.TrimRight(head, " ")
	head, ok = bytes.CutSuffix(head, []byte(`"id"`))
	if !ok {
		return "", nil, false
	}
	head = bytes.TrimRight(head, " ")
	head, ok = bytes.CutSuffix(head, []byte(","))
	if !ok {
		return "", nil, false
	}
	return id, json.RawMessage(bytes.TrimSpace(head)), true
}

// Call sends one request and waits for its reply, at most until ctx ends.
// A nil args sends no "arguments" member.
func (s *Session) Call(ctx context.Context, command string, args any) (json.RawMessage, error) {
	p, err := s.Start(command, args)
	if err != nil {
		return nil, err
	}
	return p.Wait(ctx)
}

// Pending is a request sent whose reply has not been taken yet.
type Pending struct {
	s  *Session
	id string
	ch chan sessionReply
}

// Start sends a request without waiting for its reply (Wait for it):
// several requests in flight make bulk transfers pipeline.
func (s *Session) Start(command string, args any) (*Pending, error) {
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return nil, err
	}
	s.next++
	id := "gc" + strconv.FormatUint(s.next, 10)
	ch := make(chan sessionReply, 1)
	s.pending[id] = ch
	s.mu.Unlock()

	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		s.forget(id)
		return nil, fmt.Errorf("encode %s: %w", command, err)
	}
	s.wmu.Lock()
	_, err = s.conn.Write(append(b, '\n'))
	s.wmu.Unlock()
	if err != nil {
		s.forget(id)
		return nil, fmt.Errorf("send %s: %w", command, err)
	}
	return &Pending{s: s, id: id, ch: ch}, nil
}

// Wait waits for the reply, at most until ctx ends.
func (p *Pending) Wait(ctx context.Context) (json.RawMessage, error) {
	select {
	case r := <-p.ch:
		return r.ret, r.err
	case <-ctx.Done():
		p.s.forget(p.id)
		return nil, ctx.Err()
	}
}

func (s *Session) forget(id string) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

// IsCommandNotFound tells an agent that does not serve a command.
func IsCommandNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Class == "CommandNotFound"
}
