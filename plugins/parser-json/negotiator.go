package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/guest-agent/guest-agent/shared/dialect"
	"github.com/guest-agent/guest-agent/shared/negotiator"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// negotiatorDialect speaks negotiator 0.12.2 (shared/negotiator): an ASCII
// length line, then that many bytes of JSON; {"method", "args", "kw"} in,
// {"success", "result" | "error"} out. Without request ids the replies must
// come in request order, so a session serves one request at a time: read,
// run, answer. list_commands and execute are cmd-exec's list-commands and
// execute; nothing else is callable.
type negotiatorDialect struct{}

func (*negotiatorDialect) Name() string { return "negotiator" }

// Options: no local commands; replies are in request order already, as a
// session serves one request at a time (dialect.Options.OrderedReplies would
// let them run side by side).
func (*negotiatorDialect) Options() dialect.Options { return dialect.Options{} }

// HandleMessage answers one request body (no framing).
func (*negotiatorDialect) HandleMessage(ctx context.Context, d sdk.Dispatcher, req []byte) []byte {
	return negotiator.Answer(ctx, guestMethods{d}, req)
}

// ServeStream serves a session: a reader takes frames off the stream and
// one request runs at a time, in order, its reply written before the next
// starts. The reader keeps reading while a command runs so that it sees a
// host leave (virtio-serial EOF): the reply to that host, and the requests
// it had sent beyond, are dropped, never handed to the next host. A bad
// length line or an oversized body is answered with an error and skipped
// (the framing resynchronises at the next line or past the body); a frame
// that stops arriving for request_idle_timeout is dropped with an error;
// an EOF in the middle of a frame drops it.
func (n *negotiatorDialect) ServeStream(ctx context.Context, s sdk.StreamSession) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	items := make(chan negotiatorItem, negotiatorQueue)
	var lastEOF atomic.Int64 // when the reader last saw the host leave (unix ns)
	readErr := make(chan error, 1)
	go func() {
		readErr <- readNegotiatorFrames(ctx, s, items, &lastEOF)
		close(items)
	}()
	// hostLeft tells whether the host left after sending a request read at
	// readAt. virtio_console applies a host's port-open from a work queue,
	// after the data that followed it may have been read: a new host's
	// first request can be followed by the EOF of the host before it. An
	// EOF within hostLeaveGrace of the request is taken for that.
	hostLeft := func(readAt time.Time) bool {
		return lastEOF.Load() > readAt.Add(hostLeaveGrace).UnixNano()
	}
	for it := range items {
		if hostLeft(it.readAt) {
			continue // its host is gone: nobody to answer
		}
		reply := it.reply
		if reply == nil {
			reply = negotiator.Answer(ctx, guestMethods{s}, it.body)
			if hostLeft(it.readAt) {
				s.Logger().Debug("negotiator: reply dropped, the host that asked went away", "origin", s.Origin())
				continue
			}
		}
		var hdr [negotiator.MaxLengthDigits + 1]byte
		if _, err := s.WriteBuffers(net.Buffers{negotiator.AppendHeader(hdr[:0], len(reply)), reply}); err != nil {
			// The reader ends with the session's connection; its sends
			// give up on ctx.
			return fmt.Errorf("write reply: %w", err)
		}
	}
	return <-readErr
}

const (
	// negotiatorQueue bounds the requests read ahead of the one running (a
	// negotiator host sends one at a time; the reader is ahead only to see
	// the host leave).
	negotiatorQueue = 4
	// hostLeaveGrace: see ServeStream.
	hostLeaveGrace = 200 * time.Millisecond
)

// negotiatorItem is one request read, or the error reply to a bad frame,
// with when it was read.
type negotiatorItem struct {
	body, reply []byte
	readAt      time.Time
}

func readNegotiatorFrames(ctx context.Context, s sdk.StreamSession, items chan<- negotiatorItem, lastEOF *atomic.Int64) error {
	r := bufio.NewReaderSize(s, 64<<10)
	idle := s.RequestIdleTimeout()
	send := func(it negotiatorItem) error {
		it.readAt = time.Now()
		select {
		case items <- it:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for {
		if err := s.WaitRoom(ctx, time.Time{}); err != nil {
			return err
		}
		// Between requests the host may stay silent for as long as it
		// likes; from a request's first byte on, request_idle_timeout runs.
		_, err := r.Peek(1)
		var body []byte
		if err == nil {
			if idle > 0 {
				s.SetReadDeadline(time.Now().Add(idle))
			}
			body, err = negotiator.ReadFrame(r, s.MaxRequestBytes())
			if idle > 0 {
				s.SetReadDeadline(time.Time{})
			}
		}
		switch {
		case err == nil:
			err = send(negotiatorItem{body: body})
		case negotiator.IsFrameError(err):
			err = send(negotiatorItem{reply: negotiator.EncodeError(err.Error())})
		case errors.Is(err, os.ErrDeadlineExceeded) || sdk.IsTimeout(err):
			r.Reset(s)
			err = send(negotiatorItem{reply: negotiator.EncodeError(fmt.Sprintf("request discarded: nothing more of it arrived for %s (limit request_idle_timeout)", idle))})
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			r.Reset(s) // a partial frame is dropped with its host
			if !s.Persistent() {
				return nil
			}
			lastEOF.Store(time.Now().UnixNano())
			err = s.WaitHost(ctx)
		default:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read: %w", err)
		}
		if err != nil {
			return err
		}
	}
}

// guestMethods are negotiator's methods served by the agent's commands.
type guestMethods struct {
	d sdk.Dispatcher
}

func (g guestMethods) ListCommands(ctx context.Context) ([]string, error) {
	raw, err := g.run(ctx, "list-commands", map[string]any{})
	if err != nil {
		return nil, err
	}
	var names []string
	if err := json.Unmarshal(raw, &names); err != nil {
		return nil, fmt.Errorf("list-commands returned %.100s", raw)
	}
	return names, nil
}

func (g guestMethods) Execute(ctx context.Context, argv []string, input *string) (string, error) {
	args := map[string]any{"command": argv}
	if input != nil {
		args["input"] = *input
	}
	raw, err := g.run(ctx, "execute", args)
	if err != nil {
		return "", err
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		return "", fmt.Errorf("execute returned %.100s", raw)
	}
	return out, nil
}

func (g guestMethods) run(ctx context.Context, command string, args map[string]any) (json.RawMessage, error) {
	b, err := json.Marshal(args)
	if err != nil {
		return nil, err
	}
	o := g.d.Dispatch(ctx, command, b)
	defer o.Done()
	if o.Err != nil {
		return nil, errors.New(o.Err.Desc)
	}
	// The result outlives the outcome's buffers.
	return append(json.RawMessage(nil), o.Result...), nil
}
