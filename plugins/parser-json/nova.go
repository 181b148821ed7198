package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/guest-agent/guest-agent/shared/dialect"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// novaDialect speaks OpenStack's XenStore agent protocol (nova-agent): a
// request {"name": ..., "value": ...} written by the host under
// data/host/<id>, a response {"returncode": "<string>", "message": "<string>"}
// under data/guest/<id>. "0" is success, "404" an unknown command, "500" bad
// JSON, a missing name or a failed command; commands may choose another code
// ("D0" for keyinit) by returning {"returncode", "message"} themselves.
type novaDialect struct{}

func (*novaDialect) Name() string { return "nova" }

// Options: nova has no commands of its own (version, features, ... are
// cmd-nova's), and each request is answered under its own key.
func (*novaDialect) Options() dialect.Options { return dialect.Options{} }

// novaReply is the wire form of a response.
type novaReply struct {
	ReturnCode string `json:"returncode"`
	Message    string `json:"message"`
}

func encodeNova(code, message string) []byte {
	b, _ := json.Marshal(novaReply{ReturnCode: code, Message: message})
	return b
}

// HandleMessage answers one request. Command arguments are {"value": ...}.
func (*novaDialect) HandleMessage(ctx context.Context, d sdk.Dispatcher, req []byte) []byte {
	if !utf8.Valid(req) {
		return encodeNova("500", "invalid JSON: not UTF-8")
	}
	var msg struct {
		Name  *string         `json:"name"`
		Value json.RawMessage `json:"value"`
	}
	dec := json.NewDecoder(bytes.NewReader(req))
	if err := dec.Decode(&msg); err != nil {
		return encodeNova("500", fmt.Sprintf("invalid JSON: %v", err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return encodeNova("500", "invalid JSON: trailing data")
	}
	if msg.Name == nil || *msg.Name == "" {
		return encodeNova("500", "request has no command name")
	}
	value := msg.Value
	if len(value) == 0 {
		value = json.RawMessage(`""`)
	}
	args, _ := json.Marshal(map[string]json.RawMessage{"value": value})
	o := d.Dispatch(ctx, *msg.Name, args)
	defer o.Done()
	if o.Err != nil {
		if o.Err.Class == sdk.ClassCommandNotFound {
			return encodeNova("404", fmt.Sprintf("No such agent command '%s'", *msg.Name))
		}
		return encodeNova("500", o.Err.Desc)
	}
	if o.NoResponse {
		return encodeNova("0", "")
	}
	// A command returns a plain string (the message) or its own
	// {"returncode", "message"}.
	var s string
	if json.Unmarshal(o.Result, &s) == nil {
		return encodeNova("0", s)
	}
	var r novaReply
	if json.Unmarshal(o.Result, &r) == nil && r.ReturnCode != "" {
		return encodeNova(r.ReturnCode, r.Message)
	}
	return encodeNova("0", string(o.Result))
}

// ServeStream serves nova over a byte stream (a socket used for tests and
// in-guest callers): one request per line.
func (n *novaDialect) ServeStream(ctx context.Context, s sdk.StreamSession) error {
	return serveLines(ctx, s,
		func(line []byte) []byte { return append(n.HandleMessage(ctx, s, line), '\n') },
		func(limit int64) []byte {
			return append(encodeNova("500", fmt.Sprintf("request over the %d byte limit", limit)), '\n')
		})
}
