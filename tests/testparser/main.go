// Command guest-agent-parser-test is a parser plugin written as a third
// party would write one, against shared/sdk and shared/dialect only: the
// "lines" dialect. A request is one line of JSON, {"call": NAME, "args":
// {...}}; a reply is one line, {"ok": true, "result": ...} or {"ok": false,
// "error": TEXT, "kind": KIND}. Replies carry no id, so the dialect asks for
// them in request order. It answers "hello" and "whoami" itself (its local
// commands: qga's guest-ping and guest-info are not its business), and puts
// bulk data (guest-file-read's buf-b64) into its replies with the exported
// blob helper. The e2e tests drive it through the real agent.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/guest-agent/guest-agent/shared/dialect"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

func main() {
	sdk.ServeParser(&sdk.ParserPlugin{Name: "parser-test", Version: "1.0.0", Dialects: []sdk.Dialect{lines{}}})
}

type lines struct{}

func (lines) Name() string { return "lines" }

func (lines) Options() dialect.Options {
	return dialect.Options{
		OrderedReplies: true,
		LocalCommands: []dialect.LocalCommand{
			{Name: "hello", SuccessResponse: true, Run: func(context.Context, dialect.Dispatcher, json.RawMessage) *dialect.Outcome {
				return &dialect.Outcome{Result: json.RawMessage(`{"dialect":"lines"}`)}
			}},
			{Name: "whoami", SuccessResponse: true, Run: func(_ context.Context, d dialect.Dispatcher, _ json.RawMessage) *dialect.Outcome {
				c := d.Caller()
				b, _ := json.Marshal(map[string]any{"channel": c.Channel, "uid": c.PeerUid, "gid": c.PeerGid, "pid": c.PeerPid})
				return &dialect.Outcome{Result: b}
			}},
		},
	}
}

type request struct {
	Call string          `json:"call"`
	Args json.RawMessage `json:"args"`
}

func (l lines) ServeStream(ctx context.Context, s dialect.StreamSession) error {
	r := bufio.NewReader(s)
	for {
		if err := s.WaitRoom(ctx, time.Time{}); err != nil {
			return err
		}
		line, err := r.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 && err == nil {
			var req request
			if jerr := json.Unmarshal(line, &req); jerr != nil || req.Call == "" {
				// In its place among the replies: Write is ordered too.
				_, _ = s.Write(failure("bad request", "decode"))
				continue
			}
			s.Go(ctx, req.Call, req.Args, func(o *dialect.Outcome) {
				defer o.Done()
				if _, werr := s.WriteReply(o, render(o)); werr != nil {
					s.Logger().Debug("lines: reply lost", "error", werr)
				}
			})
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("lines: read: %w", err)
		}
	}
}

func (lines) HandleMessage(ctx context.Context, d dialect.Dispatcher, msg []byte) []byte {
	var req request
	if err := json.Unmarshal(msg, &req); err != nil || req.Call == "" {
		return failure("bad request", "decode")
	}
	o := d.Dispatch(ctx, req.Call, req.Args)
	defer o.Done()
	return render(o)
}

// render words an outcome the dialect's way: its own texts for the
// engine's refusals, the result with its bulk data in place.
func render(o *dialect.Outcome) []byte {
	if o.Err != nil {
		if o.Failure != nil && o.Failure.Kind == dialect.FailUnknown {
			return failure("no such call: "+o.Failure.Command, "unknown")
		}
		return failure(o.Err.Desc, o.Err.Class)
	}
	out := append([]byte(nil), `{"ok":true,"result":`...)
	out = o.AppendResult(out)
	return append(out, "}\n"...)
}

func failure(text, kind string) []byte {
	b, _ := json.Marshal(map[string]any{"ok": false, "error": text, "kind": kind})
	return append(b, '\n')
}
