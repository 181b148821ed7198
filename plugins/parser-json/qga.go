package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	"github.com/guest-agent/guest-agent/shared/dialect"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// qgaDialect speaks QEMU's guest agent protocol: {"execute", "arguments",
// "id"} in, {"return"} or {"error": {"class", "desc"}} out, one JSON value per
// line, with 0xFF resynchronisation.
type qgaDialect struct{}

func (*qgaDialect) Name() string { return "qga" }

// Options: qga's core commands are answered in the parser process (a ping
// crosses no process boundary); replies carry the request's id, so they go
// out as commands finish.
func (*qgaDialect) Options() dialect.Options {
	return dialect.Options{LocalCommands: qgaCoreCommands()}
}

// readBufSize is large so a 1 MiB guest-file-write arrives in few reads.
const readBufSize = 256 << 10

func (q *qgaDialect) ServeStream(ctx context.Context, s sdk.StreamSession) error {
	// Large requests and replies come from the engine's pool: a 48 MiB
	// file read encodes into 64 MiB of base64, which should not be a fresh
	// allocation each time, and the engine gives the pool's memory back
	// once the session calms down.
	pool := s.Buffers()
	sp := &splitter{max: s.MaxRequestBytes(), pool: pool}
	buf := make([]byte, readBufSize)
	idle := s.RequestIdleTimeout()
	var partialDeadline time.Time // when the partial request is given up
	for {
		// What the peer makes the agent hold is bounded: a session over
		// its memory budget reads nothing until its replies went out.
		err := s.WaitRoom(ctx, partialDeadline)
		n := 0
		if err == nil {
			n, err = s.Read(buf)
		}
		if n > 0 {
			sp.feed(buf[:n], func(value []byte, owned bool, problem string) {
				if problem != "" {
					writeReply(s, errorReply(nil, sdk.ClassGenericError, problem, false))
					return
				}
				q.serveOne(ctx, s, value, owned, pool)
			})
			s.HoldPending(sp.held())
			// A peer that stops in the middle of a request must not keep
			// its bytes for ever.
			switch {
			case idle > 0 && sp.partial():
				partialDeadline = time.Now().Add(idle)
				s.SetReadDeadline(partialDeadline)
			case !partialDeadline.IsZero():
				partialDeadline = time.Time{}
				s.SetReadDeadline(partialDeadline)
			}
		}
		if err != nil {
			if !partialDeadline.IsZero() && sdk.IsTimeout(err) {
				sp.reset()
				s.HoldPending(0)
				partialDeadline = time.Time{}
				s.SetReadDeadline(partialDeadline)
				writeReply(s, errorReply(nil, sdk.ClassGenericError,
					fmt.Sprintf("request discarded: nothing more of it arrived for %s (limit request_idle_timeout)", idle), false))
				continue
			}
			if errors.Is(err, io.EOF) && s.Persistent() {
				// virtio-serial: the host closed its end. Drop the partial
				// request and wait, without polling, for it to come back.
				sp.reset()
				s.HoldPending(0)
				if werr := s.WaitHost(ctx); werr != nil {
					return werr
				}
				continue
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("qga: read: %w", err)
		}
	}
}

func writeReply(s sdk.StreamSession, b []byte) {
	if b == nil {
		return
	}
	if _, err := s.Write(b); err != nil {
		s.Logger().Debug("qga: reply lost", "origin", s.Origin(), "error", err)
	}
}

// serveOne decodes one request and runs it; the reply is written when the
// command completes (commands of different plugins run side by side).
func (q *qgaDialect) serveOne(ctx context.Context, s sdk.StreamSession, value []byte, owned bool, pool *dataplane.BufferPool) {
	req, errReply := decodeRequest(value)
	if errReply != nil {
		writeReply(s, errReply)
		if owned {
			pool.Put(value)
		}
		return
	}
	// A small request's buffer is reused by the splitter: keep what we need.
	id, args := req.id, req.args
	if !owned {
		id, args = cloneRaw(req.id), cloneRaw(req.args)
	}
	delimited := req.execute == "guest-sync-delimited"
	s.Go(ctx, req.execute, args, func(o *sdk.Outcome) {
		if o.BlobText != nil {
			// Read-ahead encoded the data already: write it where it is.
			if head, tail, ok := blobReplyParts(o, id, delimited); ok {
				writeOutcome(s, o, head, o.BlobText, tail)
				o.Done()
				return
			}
		}
		reply := encodeOutcome(o, id, delimited, pool.Get)
		o.Done()
		if reply != nil {
			writeOutcome(s, o, reply)
		}
		pool.Put(reply)
		if owned {
			pool.Put(value) // nothing refers to the request any more
		}
	})
}

// writeOutcome writes the reply to a command run with Go; it is dropped
// when the host resynchronised since the request (see sdk.WriteReply).
func writeOutcome(s sdk.StreamSession, o *sdk.Outcome, parts ...[]byte) {
	if _, err := s.WriteReply(o, parts...); err != nil {
		s.Logger().Debug("qga: reply lost", "origin", s.Origin(), "error", err)
	}
}

func (q *qgaDialect) HandleMessage(ctx context.Context, d sdk.Dispatcher, value []byte) []byte {
	req, errReply := decodeRequest(value)
	if errReply != nil {
		return errReply
	}
	o := d.Dispatch(ctx, req.execute, req.args)
	defer o.Done()
	return encodeOutcome(o, req.id, req.execute == "guest-sync-delimited", nil)
}

func cloneRaw(b json.RawMessage) json.RawMessage {
	if b == nil {
		return nil
	}
	return append(json.RawMessage(nil), b...)
}

type qgaRequest struct {
	execute string
	args    json.RawMessage
	id      json.RawMessage
}

// decodeRequest validates the envelope with qemu-ga's error texts.
func decodeRequest(value []byte) (qgaRequest, []byte) {
	var req qgaRequest
	if !utf8.Valid(value) {
		return req, errorReply(nil, sdk.ClassGenericError, "JSON parse error, invalid UTF-8 sequence in string", false)
	}
	trimmed := bytes.TrimSpace(value)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if !json.Valid(trimmed) {
			return req, errorReply(nil, sdk.ClassGenericError, "JSON parse error, "+syntaxDesc(trimmed), false)
		}
		return req, errorReply(nil, sdk.ClassGenericError, "QMP input must be a JSON object", false)
	}
	members, err := decodeObject(trimmed)
	if err != nil {
		return req, errorReply(nil, sdk.ClassGenericError, "JSON parse error, "+err.Error(), false)
	}
	req.id = compactID(members["id"])
	for name := range members {
		switch name {
		case "execute", "arguments", "id":
		default:
			return req, errorReply(req.id, sdk.ClassGenericError, fmt.Sprintf("QMP input member '%s' is unexpected", name), false)
		}
	}
	exec, ok := members["execute"]
	if !ok {
		return req, errorReply(req.id, sdk.ClassGenericError, "QMP input lacks member 'execute'", false)
	}
	// json.Unmarshal takes null for a string: only a string will do.
	if t := bytes.TrimSpace(exec); len(t) == 0 || t[0] != '"' || json.Unmarshal(t, &req.execute) != nil {
		return req, errorReply(req.id, sdk.ClassGenericError, "QMP input member 'execute' must be a string", false)
	}
	if a, ok := members["arguments"]; ok {
		if len(bytes.TrimSpace(a)) == 0 || bytes.TrimSpace(a)[0] != '{' {
			return req, errorReply(req.id, sdk.ClassGenericError, "QMP input member 'arguments' must be an object", false)
		}
		req.args = a
	}
	return req, nil
}

// compactID returns the request's id as it is echoed: on one line. An id is
// any JSON value and is echoed as given, but whitespace inside it (a newline
// between array members, say) would cut the reply line, so such an id is
// written again the way qemu-ga prints JSON (", " and ": " separators).
func compactID(id json.RawMessage) json.RawMessage {
	if id == nil || !bytes.ContainsAny(id, " \t\r\n") {
		return id
	}
	out, err := appendQMPJSON(nil, json.NewDecoder(bytes.NewReader(id)))
	if err != nil {
		return id // not reached: the id was validated with the request
	}
	return out
}

// appendQMPJSON re-encodes the next JSON value of dec on one line.
func appendQMPJSON(out []byte, dec *json.Decoder) ([]byte, error) {
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch v := tok.(type) {
	case json.Delim:
		closing := byte(']')
		if v == '{' {
			closing = '}'
		}
		out = append(out, byte(v))
		for i := 0; dec.More(); i++ {
			if i > 0 {
				out = append(out, ", "...)
			}
			if v == '{' {
				key, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := json.Marshal(key.(string))
				out = append(append(out, k...), ": "...)
			}
			if out, err = appendQMPJSON(out, dec); err != nil {
				return nil, err
			}
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return nil, err
		}
		return append(out, closing), nil
	case string:
		b, _ := json.Marshal(v)
		return append(out, b...), nil
	case json.Number:
		return append(out, v...), nil
	case bool:
		return strconv.AppendBool(out, v), nil
	default: // null
		return append(out, "null"...), nil
	}
}

// decodeObject splits a JSON object into its members, refusing duplicate
// keys as QEMU's parser does.
func decodeObject(b []byte) (map[string]json.RawMessage, error) {
	members, err := sdk.SplitObject(b)
	if err != nil {
		return nil, err
	}
	m := make(map[string]json.RawMessage, len(members))
	for _, mb := range members {
		m[mb.Key] = mb.Value
	}
	return m, nil
}

func cleanJSONError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("%s", se.Error())
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return errors.New("unexpected end of input")
	}
	return err
}

func syntaxDesc(b []byte) string {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return cleanJSONError(err).Error()
	}
	return "invalid input"
}

// encodeOutcome renders a reply line; nil for a command that answers nothing.
// alloc, when not nil, provides the reply buffer (it is handed back by the
// caller once written).
func encodeOutcome(o *sdk.Outcome, id json.RawMessage, delimited bool, alloc func(int) []byte) []byte {
	if o.Err != nil {
		return failureReply(o, id, delimited)
	}
	if o.NoResponse {
		return nil
	}
	if alloc == nil {
		alloc = func(n int) []byte { return make([]byte, n) }
	}
	if head, tail, ok := blobReplyParts(o, id, delimited); ok {
		// The bulk data goes straight into the reply: one pass, no
		// intermediate string (or a copy of what read-ahead encoded).
		out := append(alloc(len(head) + o.BlobTextLen() + len(tail))[:0], head...)
		out = o.AppendBlobText(out)
		return append(out, tail...)
	}
	result := o.ResultJSON()
	out := alloc(len(result) + len(id) + 32)[:0]
	if delimited {
		out = append(out, resyncByte)
	}
	out = append(out, `{"return": `...)
	out = append(out, result...)
	return appendEnd(out, id)
}

// appendEnd closes a reply: its id, if the request had one, and the line.
func appendEnd(out []byte, id json.RawMessage) []byte {
	if id != nil {
		out = append(out, `, "id": `...)
		out = append(out, id...)
	}
	return append(out, "}\n"...)
}

// blobReplyParts renders the reply of a successful outcome that carries bulk
// data (Outcome.Blob or, encoded by read-ahead, Outcome.BlobText) as the
// bytes before and after the data's base64 text, which goes into the result
// object as member BlobField (dialect.Outcome.BlobSplice). ok is false for
// any other outcome.
func blobReplyParts(o *sdk.Outcome, id json.RawMessage, delimited bool) (head, tail []byte, ok bool) {
	if !o.HasBlob() {
		return nil, nil, false
	}
	head = make([]byte, 0, 32+len(o.BlobField))
	if delimited {
		head = append(head, resyncByte)
	}
	head = append(head, `{"return": `...)
	head, tail, ok = o.AppendBlobSplice(head, make([]byte, 0, len(o.Result)+len(id)+16))
	if !ok {
		return nil, nil, false
	}
	return head, appendEnd(tail, id), true
}

// failureReply renders a failed outcome: a plugin's error as it is, the
// engine's own refusals and failures (Outcome.Failure) in qemu-ga's words.
func failureReply(o *sdk.Outcome, id json.RawMessage, delimited bool) []byte {
	desc := o.Err.Desc
	if o.Failure != nil {
		desc = qgaFailureText(o.Failure, desc)
	}
	return errorReply(id, o.Err.Class, desc, delimited)
}

// qgaFailureText words a refusal or failure of the engine as qemu-ga does
// (its class is the engine's: CommandNotFound for a command refused as not
// there, GenericError otherwise); fallback for a kind it does not know.
func qgaFailureText(f *dialect.Failure, fallback string) string {
	switch f.Kind {
	case dialect.FailUnknown:
		return fmt.Sprintf("The command %s has not been found", f.Command)
	case dialect.FailDisabled:
		return fmt.Sprintf("Command %s has been disabled", f.Command)
	case dialect.FailFrozen:
		return fmt.Sprintf("Command %s has been disabled: the agent is in frozen state", f.Command)
	case dialect.FailArgsNotObject:
		return "QMP input member 'arguments' must be an object"
	case dialect.FailBlobNotString:
		return fmt.Sprintf("Invalid parameter type for '%s', expected: string", f.Member)
	case dialect.FailBlobNotBase64:
		return "Base64 data contains invalid characters"
	case dialect.FailTimeout:
		return fmt.Sprintf("command %s timed out after %s", f.Command, f.Timeout)
	case dialect.FailUnavailable:
		return fmt.Sprintf("command %s failed: %v", f.Command, f.Cause)
	}
	return fallback
}

func errorReply(id json.RawMessage, class, desc string, delimited bool) []byte {
	e := struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	}{class, desc}
	body, _ := json.Marshal(e)
	out := make([]byte, 0, len(body)+len(id)+24)
	if delimited {
		out = append(out, resyncByte)
	}
	out = append(out, `{"error": `...)
	out = append(out, body...)
	if id != nil {
		out = append(out, `, "id": `...)
		out = append(out, id...)
	}
	out = append(out, "}\n"...)
	return out
}
