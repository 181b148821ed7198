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

// ServeStream serves a session frame by frame. A bad length line or an
// oversized body is answered with an error and skipped (the framing package
// resynchronises at the next line or past the body); a frame that stops
// arriving for request_idle_timeout is dropped with an error reply; an EOF
// in the middle of a frame drops it (virtio-serial: the host went away, and
// the session waits for the next one).
func (n *negotiatorDialect) ServeStream(ctx context.Context, s sdk.StreamSession) error {
	r := bufio.NewReaderSize(s, 64<<10)
	idle := s.RequestIdleTimeout()
	svc := guestMethods{s}
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
		var reply []byte
		switch {
		case err == nil:
			reply = negotiator.Answer(ctx, svc, body)
		case negotiator.IsFrameError(err):
			reply = negotiator.EncodeError(err.Error())
		case errors.Is(err, os.ErrDeadlineExceeded) || sdk.IsTimeout(err):
			r.Reset(s)
			reply = negotiator.EncodeError(fmt.Sprintf("request discarded: nothing more of it arrived for %s (limit request_idle_timeout)", idle))
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			r.Reset(s) // a partial frame is dropped with its host
			if !s.Persistent() {
				return nil
			}
			if err := s.WaitHost(ctx); err != nil {
				return err
			}
			continue
		default:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read: %w", err)
		}
		var hdr [negotiator.MaxLengthDigits + 1]byte
		if _, err := s.WriteBuffers(net.Buffers{negotiator.AppendHeader(hdr[:0], len(reply)), reply}); err != nil {
			return fmt.Errorf("write reply: %w", err)
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
	return o.Result, nil
}
