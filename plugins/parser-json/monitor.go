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

	"github.com/guest-agent/guest-agent/shared/dialect"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// monitorDialect speaks the Google guest agent's command monitor, through
// which programs inside the guest call the agent: a connection carries one
// JSON object, {"Command": "name", ...arguments} (or "Name", as the Google
// agent's README shows), written without a newline; the agent answers
// {"Status": 0, "StatusMessage": "", ...result members} and closes the
// connection, and the client reads to EOF.
type monitorDialect struct{}

func (*monitorDialect) Name() string { return "monitor" }

// Options: the monitor answers guest-ping and guest-info itself, with
// qga's result members (beside Status); they obey the channel's lists and
// policy as every command does. Each connection carries one request, so
// replies have no order to keep.
func (*monitorDialect) Options() dialect.Options {
	return dialect.Options{LocalCommands: []dialect.LocalCommand{
		{Name: "guest-ping", SuccessResponse: true, Run: guestPing},
		{Name: "guest-info", SuccessResponse: true, ListsCommands: true, Run: guestInfo},
	}}
}

// The Google agent's status codes and their texts, which its clients
// compare against (command.CmdNotFoundError and the others there).
const (
	monitorOK           = 0
	monitorNotFound     = 101
	monitorBadRequest   = 102
	monitorConnError    = 103
	monitorTimeout      = 104
	monitorHandlerError = 105 // with the command's own error text
	monitorInternal     = 106
)

var monitorTexts = map[int]string{
	monitorNotFound:   "Could not find a handler for the requested command",
	monitorBadRequest: "Could not parse valid JSON from request",
	monitorConnError:  "Connection error",
	monitorTimeout:    "Connection timeout before reading valid request",
	monitorInternal:   "The command server encountered an internal error trying to respond to your request",
}

// monitorResultMember holds a command's result that is not a JSON object
// (a string, a number, an array), and an object result that has members of
// its own named Status or StatusMessage.
const monitorResultMember = "Result"

const (
	// defaultMonitorRequestTimeout is the Google agent's
	// command_request_timeout: the whole request must arrive within it.
	defaultMonitorRequestTimeout = 10 * time.Second
	// monitorReadChunk is what one read asks for first (the smallest
	// buffer the engine's pool keeps); requests are small.
	monitorReadChunk = 16 << 10
	// After the reply, whatever the client sent beyond its request is read
	// and dropped, for at most this long and this much: closing a unix
	// socket with unread input makes the client's next read fail with
	// ECONNRESET instead of EOF, and the client reads to EOF.
	monitorDrainTime  = time.Second
	monitorDrainBytes = 1 << 20
)

// ServeStream serves the one request of a connection.
func (m *monitorDialect) ServeStream(ctx context.Context, s sdk.StreamSession) error {
	timeout := defaultMonitorRequestTimeout
	if t := s.RequestTimeout(); t > 0 {
		timeout = t
	}
	deadline := time.Now().Add(timeout)
	value, status, readErr := readMonitorRequest(ctx, s, deadline, s.MaxRequestBytes())
	s.HoldPending(0)
	var reply []byte
	if status != monitorOK {
		if status == monitorBadRequest && readErr != nil {
			s.Logger().Debug("monitor: request refused", "origin", s.Origin(), "reason", readErr)
		}
		reply = monitorStatus(status, monitorTexts[status])
	} else {
		reply = monitorAnswer(ctx, s, value)
	}
	if _, err := s.Write(reply); err != nil {
		s.Logger().Debug("monitor: reply lost", "origin", s.Origin(), "error", err)
		return nil
	}
	drainMonitor(s)
	if status == monitorConnError || status == monitorTimeout {
		return readErr
	}
	return nil
}

// readMonitorRequest reads until the bytes hold one complete JSON value
// (what follows it is not read: one request per connection), the deadline
// passes (104), the peer stops sending (103), or the request cannot be a
// JSON object or grows over max (102).
func readMonitorRequest(ctx context.Context, s sdk.StreamSession, deadline time.Time, max int64) ([]byte, int, error) {
	s.SetReadDeadline(deadline)
	var sc monitorScanner
	var buf []byte
	// From the engine's pool: a burst of connections then leaves no
	// garbage behind, and taking from it arms the engine's return of
	// memory to the system once the burst is over.
	pool := s.Buffers()
	chunk := pool.Get(monitorReadChunk)
	defer func() { pool.Put(chunk) }()
	for {
		// A session over its memory budget reads nothing until others
		// have answered; the deadline still applies.
		if err := s.WaitRoom(ctx, deadline); err != nil {
			if sdk.IsTimeout(err) {
				return nil, monitorTimeout, err
			}
			return nil, monitorConnError, err
		}
		n, err := s.Read(chunk)
		if n > 0 {
			end, bad := sc.scan(chunk[:n])
			switch {
			case bad:
				return nil, monitorBadRequest, errors.New("not a JSON object: it starts otherwise, its brackets do not match or nest too deep")
			case end >= 0:
				buf = append(buf, chunk[:end]...)
				return buf, monitorOK, nil
			}
			buf = append(buf, chunk[:n]...)
			if max > 0 && int64(len(buf)) > max {
				return nil, monitorBadRequest, fmt.Errorf("request over the %d-byte limit (limits.max_request_bytes)", max)
			}
			s.HoldPending(int64(cap(buf)))
			if len(buf) > len(chunk) && len(chunk) < 256<<10 {
				pool.Put(chunk)
				chunk = pool.Get(len(chunk) * 4) // a large request: fewer reads
			}
		}
		if err != nil {
			if sdk.IsTimeout(err) || !time.Now().Before(deadline) {
				return nil, monitorTimeout, err
			}
			if errors.Is(err, io.EOF) {
				return nil, monitorConnError, errors.New("the peer closed before a whole request")
			}
			return nil, monitorConnError, err
		}
	}
}

// drainMonitor ends the connection the way a client reading to EOF wants
// it: the write side is closed at once (EOF after the reply), then what the
// client sent beyond its request is read and dropped until it closes.
func drainMonitor(s sdk.StreamSession) {
	if s.CloseWrite() != nil {
		return
	}
	s.SetReadDeadline(time.Now().Add(monitorDrainTime))
	_, _ = io.CopyN(io.Discard, s, monitorDrainBytes)
}

// monitorMaxDepth bounds the nesting of a request (encoding/json's own
// limit): deeper input is refused at once instead of being held.
const monitorMaxDepth = 10000

// monitorScanner finds where the first JSON value of a stream ends. It
// tracks nesting and strings only; the complete value is parsed afterwards.
// A closing bracket that does not match its opener makes the input bad at
// once, so malformed input is answered without waiting for the timeout.
type monitorScanner struct {
	started  bool
	open     []byte // the openers not closed yet, '{' or '['
	inString bool
	escape   bool
}

// scan consumes b and returns the index in b just past the end of the
// value (-1: not complete yet); bad when the first byte that is not white
// space cannot start an object (a request is always one), a bracket closes
// what it did not open, or the nesting is deeper than monitorMaxDepth.
func (sc *monitorScanner) scan(b []byte) (end int, bad bool) {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !sc.started {
			switch c {
			case ' ', '\t', '\n', '\r':
				continue
			case '{':
				sc.started, sc.open = true, append(sc.open[:0], '{')
				continue
			default:
				return -1, true
			}
		}
		if sc.inString {
			// Skip to the next quote or backslash in one step.
			j := bytes.IndexAny(b[i:], `"\`)
			if sc.escape {
				sc.escape = false
				continue
			}
			if j < 0 {
				break
			}
			i += j
			if b[i] == '\\' {
				sc.escape = true
			} else {
				sc.inString = false
			}
			continue
		}
		switch c {
		case '"':
			sc.inString = true
		case '{', '[':
			if len(sc.open) >= monitorMaxDepth {
				return -1, true
			}
			sc.open = append(sc.open, c)
		case '}', ']':
			if opener := sc.open[len(sc.open)-1]; opener+2 != c { // '{'+2 == '}', '['+2 == ']'
				return -1, true
			}
			sc.open = sc.open[:len(sc.open)-1]
			if len(sc.open) == 0 {
				return i + 1, false
			}
		}
	}
	return -1, false
}

// HandleMessage answers one whole request (a message session, or the
// parser's ParseRequest).
func (m *monitorDialect) HandleMessage(ctx context.Context, d sdk.Dispatcher, req []byte) []byte {
	var sc monitorScanner
	end, bad := sc.scan(req)
	if bad || end < 0 {
		return monitorStatus(monitorBadRequest, monitorTexts[monitorBadRequest])
	}
	return monitorAnswer(ctx, d, req[:end])
}

// monitorAnswer decodes one complete request, runs its command and
// encodes the reply.
func monitorAnswer(ctx context.Context, d sdk.Dispatcher, value []byte) []byte {
	command, args, status := decodeMonitorRequest(value)
	if status != monitorOK {
		return monitorStatus(status, monitorTexts[status])
	}
	o := d.Dispatch(ctx, command, args)
	defer o.Done()
	return encodeMonitorOutcome(o)
}

// decodeMonitorRequest returns the command ("Command", else "Name") and the
// other members as its arguments object.
func decodeMonitorRequest(value []byte) (command string, args json.RawMessage, status int) {
	if !utf8.Valid(value) {
		return "", nil, monitorBadRequest
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(value, &members); err != nil || members == nil {
		return "", nil, monitorBadRequest
	}
	key := "Command"
	raw, ok := members[key]
	if !ok {
		key = "Name"
		raw, ok = members[key]
	}
	if !ok {
		return "", nil, monitorNotFound
	}
	if err := json.Unmarshal(raw, &command); err != nil {
		return "", nil, monitorBadRequest // the Google agent cannot decode it either
	}
	if command == "" {
		return "", nil, monitorNotFound
	}
	delete(members, key)
	args, err := json.Marshal(members)
	if err != nil {
		return "", nil, monitorBadRequest
	}
	return command, args, monitorOK
}

// monitorStatus is a reply with no result members.
func monitorStatus(status int, message string) []byte {
	b := make([]byte, 0, 64+len(message))
	b = append(b, `{"Status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"StatusMessage":`...)
	b = appendJSONString(b, message)
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}

// encodeMonitorOutcome is the reply to a command's outcome: an unknown or
// disabled command is 101; a plugin that could not answer (it died, or
// could not start) 106, as is a result whose JSON cannot be read (a
// plugin's bug); any other failure 105 with its own text (a command's
// error, the policy's refusal, a timeout). A result object's members go
// beside Status, anything else under "Result".
func encodeMonitorOutcome(o *sdk.Outcome) []byte {
	if o.Err != nil {
		if f := o.Failure; f != nil {
			switch f.Kind {
			case dialect.FailUnknown, dialect.FailDisabled:
				return monitorStatus(monitorNotFound, monitorTexts[monitorNotFound])
			case dialect.FailUnavailable:
				return monitorStatus(monitorInternal, monitorTexts[monitorInternal])
			}
		} else if o.Err.Class == sdk.ClassCommandNotFound {
			return monitorStatus(monitorNotFound, monitorTexts[monitorNotFound])
		}
		return monitorStatus(monitorHandlerError, o.Err.Desc)
	}
	if o.NoResponse || len(bytes.TrimSpace(o.Result)) == 0 && !o.HasBlob() {
		return monitorStatus(monitorOK, "")
	}
	result := bytes.TrimSpace(o.Result)
	if o.HasBlob() {
		if len(result) > 0 && result[0] != '{' {
			return monitorStatus(monitorInternal, monitorTexts[monitorInternal]) // the data has nowhere to go
		}
		result = o.AppendResult(nil)
	}
	if !json.Valid(result) {
		return monitorStatus(monitorInternal, monitorTexts[monitorInternal])
	}
	out := monitorStatus(monitorOK, "")
	out = out[:len(out)-1] // reopen the object
	var members map[string]json.RawMessage
	isObject := result[0] == '{' && json.Unmarshal(result, &members) == nil
	_, clashStatus := members["Status"]
	_, clashMessage := members["StatusMessage"]
	if isObject && !clashStatus && !clashMessage {
		if inner := bytes.TrimSpace(result[1 : len(result)-1]); len(inner) > 0 {
			out = append(out, ',')
			out = append(out, inner...)
		}
	} else {
		out = append(out, `,"`+monitorResultMember+`":`...)
		out = append(out, result...)
	}
	return append(out, '}')
}
