// Command guest-agent-parser-lines is a parser plugin serving the "lines"
// dialect: a request is one line of JSON, {"cmd": NAME, "args": {...}}, and
// its reply one line, {"ok": RESULT} or {"err": TEXT}, in request order.
// Written the way a third party writes one, against the shared module only.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

type lines struct{}

func (lines) Name() string { return "lines" }

// Options: replies carry no id, so they must come in the order of the
// requests (the engine still runs the commands side by side). No local
// commands: every command is a plugin's; qga's guest-ping and guest-info
// are qga's business.
func (lines) Options() sdk.DialectOptions { return sdk.DialectOptions{OrderedReplies: true} }

type request struct {
	Cmd  string          `json:"cmd"`
	Args json.RawMessage `json:"args"`
}

func (lines) ServeStream(ctx context.Context, s sdk.StreamSession) error {
	r := bufio.NewReaderSize(s, 64<<10)
	for {
		// Under the memory budgets before reading more (replies not yet
		// written count), so a host that never reads is not buffered for.
		if err := s.WaitRoom(ctx, time.Time{}); err != nil {
			return err
		}
		line, err := readLine(r, s)
		switch {
		case errors.Is(err, errTooLong):
			_, _ = s.Write(failure(fmt.Sprintf("request over %d bytes", s.MaxRequestBytes())))
			continue
		case errors.Is(err, io.EOF) && s.Persistent(): // a serial port: the host comes back
			if err := s.WaitHost(ctx); err != nil {
				return err
			}
			continue
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return fmt.Errorf("lines: %w", err)
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil || req.Cmd == "" {
			// Written from the reader, it takes its place among the replies.
			_, _ = s.Write(failure(`a request is {"cmd": NAME, "args": {...}} on one line`))
			continue
		}
		s.Go(ctx, req.Cmd, req.Args, func(o *sdk.Outcome) {
			defer o.Done()
			_, _ = s.WriteReply(o, render(o)) // an error here is the session's end
		})
	}
}

func (lines) HandleMessage(ctx context.Context, d sdk.Dispatcher, msg []byte) []byte {
	var req request
	if err := json.Unmarshal(msg, &req); err != nil || req.Cmd == "" {
		return failure(`a request is {"cmd": NAME, "args": {...}}`)
	}
	o := d.Dispatch(ctx, req.Cmd, req.Args)
	defer o.Done()
	return render(o)
}

// render is the reply to an outcome. AppendResult puts bulk data, which
// comes from the plugin raw (guest-file-read's bytes), into the result as
// base64, where the plugin's command says it goes ("buf-b64").
func render(o *sdk.Outcome) []byte {
	if o.Err != nil {
		return failure(o.Err.Desc)
	}
	out := o.AppendResult([]byte(`{"ok":`))
	return append(out, "}\n"...)
}

func failure(text string) []byte {
	b, _ := json.Marshal(map[string]string{"err": text})
	return append(b, '\n')
}

var errTooLong = errors.New("request too long")

// readLine returns the next line. One longer than the channel's
// max_request_bytes is read to its end and dropped (errTooLong); the bytes
// of a line still coming count against the session's memory budget.
func readLine(r *bufio.Reader, s sdk.StreamSession) ([]byte, error) {
	var line []byte
	tooLong := false
	defer s.HoldPending(0)
	for {
		part, err := r.ReadSlice('\n')
		if !tooLong && int64(len(line)+len(part)) > s.MaxRequestBytes() {
			tooLong, line = true, nil
		}
		if !tooLong {
			line = append(line, part...)
			s.HoldPending(int64(len(line)))
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil:
			return nil, err // a last line without its newline is not a request
		case tooLong:
			return nil, errTooLong
		}
		return line, nil
	}
}

func main() {
	sdk.ServeParser(&sdk.ParserPlugin{Name: "parser-lines", Version: "1.0.0", Dialects: []sdk.Dialect{lines{}}})
}
