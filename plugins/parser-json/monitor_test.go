package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// monitorDispatcher answers what the monitor's replies are made of; the
// real engine and plugins are the end-to-end tests' (tests/e2e).
type monitorDispatcher struct{ echoDispatcher }

func (monitorDispatcher) Dispatch(ctx context.Context, command string, args json.RawMessage) *sdk.Outcome {
	switch command {
	case "args":
		return &sdk.Outcome{Result: args}
	case "string":
		return &sdk.Outcome{Result: json.RawMessage(`"vm-1"`)}
	case "array":
		return &sdk.Outcome{Result: json.RawMessage(` [1, "two"] `)}
	case "null":
		return &sdk.Outcome{Result: json.RawMessage(`null`)}
	case "clash":
		return &sdk.Outcome{Result: json.RawMessage(`{"Status":"mine"}`)}
	case "broken":
		return &sdk.Outcome{Result: json.RawMessage(`{"a":`)}
	case "quiet":
		return &sdk.Outcome{NoResponse: true}
	case "disabled":
		return failure(&dialect.Failure{Kind: dialect.FailDisabled, Command: command})
	case "died":
		return failure(&dialect.Failure{Kind: dialect.FailUnavailable, Command: command, Cause: errors.New("plugin exited")})
	case "slow":
		return failure(&dialect.Failure{Kind: dialect.FailTimeout, Command: command, Timeout: time.Second})
	case "denied":
		return failure(&dialect.Failure{Kind: dialect.FailDenied, Command: command, Caller: "uid 1000 gid 1000 pid 7", Channel: "monitor"})
	case "old-not-found":
		return &sdk.Outcome{Err: &pb.Error{Class: sdk.ClassCommandNotFound, Desc: "no"}}
	}
	return echoDispatcher{}.Dispatch(ctx, command, args)
}

func failure(f *dialect.Failure) *sdk.Outcome {
	return &sdk.Outcome{Err: &pb.Error{Class: sdk.ClassGenericError, Desc: f.Error()}, Failure: f}
}

func TestMonitorReplies(t *testing.T) {
	m := &monitorDialect{}
	for _, c := range []struct{ in, want string }{
		{`{"Command":"guest-ping"}`, `{"Status":0,"StatusMessage":""}`},
		{`{"Name":"guest-ping"}`, `{"Status":0,"StatusMessage":""}`},
		{` {"Command":"args","b":[1,{"c":"}"}],"a":"x"}`, `{"Status":0,"StatusMessage":"","a":"x","b":[1,{"c":"}"}]}`},
		// The member that routes is not an argument; the other one is.
		{`{"Command":"args","Name":"n"}`, `{"Status":0,"StatusMessage":"","Name":"n"}`},
		{`{"Name":"args","command":"lower case is an argument"}`, `{"Status":0,"StatusMessage":"","command":"lower case is an argument"}`},
		{`{"Command":"string"}`, `{"Status":0,"StatusMessage":"","Result":"vm-1"}`},
		{`{"Command":"array"}`, `{"Status":0,"StatusMessage":"","Result":[1, "two"]}`},
		{`{"Command":"null"}`, `{"Status":0,"StatusMessage":"","Result":null}`},
		{`{"Command":"clash"}`, `{"Status":0,"StatusMessage":"","Result":{"Status":"mine"}}`},
		{`{"Command":"quiet"}`, `{"Status":0,"StatusMessage":""}`},
		{`{"Command":"blob"}`, `{"Status":0,"StatusMessage":"","buf-b64": "YWJj", "count":3,"eof":true}`},
		{`{"Command":"nope"}`, `{"Status":101,"StatusMessage":"Could not find a handler for the requested command"}`},
		{`{"Command":"disabled"}`, `{"Status":101,"StatusMessage":"Could not find a handler for the requested command"}`},
		{`{"Command":"old-not-found"}`, `{"Status":101,"StatusMessage":"Could not find a handler for the requested command"}`},
		{`{"Command":"died"}`, `{"Status":106,"StatusMessage":"The command server encountered an internal error trying to respond to your request"}`},
		{`{"Command":"slow"}`, `{"Status":105,"StatusMessage":"command slow timed out after 1s"}`},
		{`{"Command":"denied"}`, `{"Status":105,"StatusMessage":"Permission denied: uid 1000 gid 1000 pid 7 may not call denied on channel monitor (its allow policy)"}`},
		{`{"Command":""}`, `{"Status":101,"StatusMessage":"Could not find a handler for the requested command"}`},
		{`{"Arg":1}`, `{"Status":101,"StatusMessage":"Could not find a handler for the requested command"}`},
		{`{"Command":5}`, `{"Status":102,"StatusMessage":"Could not parse valid JSON from request"}`},
		{`{"Command":"guest-ping",}`, `{"Status":102,"StatusMessage":"Could not parse valid JSON from request"}`},
		{`["Command"]`, `{"Status":102,"StatusMessage":"Could not parse valid JSON from request"}`},
		{"{\"Command\":\"\xff\"}", `{"Status":102,"StatusMessage":"Could not parse valid JSON from request"}`},
		{`{"Command":"fail"}`, `{"Status":105,"StatusMessage":"it failed"}`},
		{`{"Command":"broken"}`, `{"Status":106,"StatusMessage":"The command server encountered an internal error trying to respond to your request"}`},
		// Only the first value counts.
		{`{"Command":"guest-ping"}{"Command":"nope"}`, `{"Status":0,"StatusMessage":""}`},
	} {
		got := string(m.HandleMessage(context.Background(), monitorDispatcher{}, []byte(c.in)))
		if got != c.want {
			t.Errorf("%s\n got %s\nwant %s", c.in, got, c.want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("reply to %s is not JSON: %s", c.in, got)
		}
	}
}

func TestMonitorScanner(t *testing.T) {
	for _, c := range []struct {
		in   string
		end  int
		bad  bool
		desc string
	}{
		{`{}`, 2, false, "empty object"},
		{" \n\t{\"a\":1} trailing", 10, false, "white space before"},
		{`{"a":"}{\"}"}{}`, 13, false, "braces and escaped quotes in a string"},
		{`{"a":[{"b":[]}]}`, 16, false, "nesting"},
		{`{"a":"\\"}x`, 10, false, "an escaped backslash ends before the quote"},
		{`{"a":1`, -1, false, "incomplete"},
		{`[1]`, -1, true, "an array"},
		{`"s"`, -1, true, "a string"},
		{`12`, -1, true, "a number"},
		{"\xff{}", -1, true, "garbage"},
		{`{"a":[}`, -1, true, "mismatched brackets"},
		{`{"a":{]`, -1, true, "mismatched brackets"},
		{`{"a":"[}"}`, 10, false, "brackets in a string"},
		{"{" + strings.Repeat("[", monitorMaxDepth), -1, true, "too deep"},
	} {
		for _, piece := range []int{1, 2, 3, 5, 8, 13, len(c.in)} {
			var sc monitorScanner
			end, bad, off := -1, false, 0
			for i := 0; i < len(c.in) && end < 0 && !bad; i += piece {
				j := min(i+piece, len(c.in))
				e, b := sc.scan([]byte(c.in[i:j]))
				if e >= 0 {
					end = off + e
				}
				bad = b
				off = j
			}
			if end != c.end || bad != c.bad {
				t.Errorf("%s (%q, pieces of %d): end %d bad %v, want %d %v", c.desc, c.in, piece, end, bad, c.end, c.bad)
			}
		}
	}
}

// checkMonitorReply: one JSON object with an integer Status and a string
// StatusMessage; a failure has a known code (or a command's own, 105).
func checkMonitorReply(t *testing.T, input, reply []byte) map[string]json.RawMessage {
	t.Helper()
	var r map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(reply))
	if err := dec.Decode(&r); err != nil || dec.More() {
		t.Fatalf("reply to %q is not one JSON object: %q (%v)", tail(input), tail(reply), err)
	}
	var status int
	var message string
	if err := json.Unmarshal(r["Status"], &status); err != nil {
		t.Fatalf("reply to %q: Status %s", tail(input), r["Status"])
	}
	if err := json.Unmarshal(r["StatusMessage"], &message); err != nil {
		t.Fatalf("reply to %q: StatusMessage %s", tail(input), r["StatusMessage"])
	}
	if want, known := monitorTexts[status]; status != 0 && status != monitorHandlerError && (!known || want != message) {
		t.Fatalf("reply to %q: Status %d %q", tail(input), status, message)
	}
	return r
}

var monitorSeeds = []string{
	`{"Command":"guest-ping"}`,
	`{"Name":"guest-info"}`,
	`{"Command":"blob","x":[1,2,{"y":"}"}]}`,
	`{"Command":"guest-ping"}{"Command":"guest-ping"}`,
	`{"Command":5}`,
	`[1,2]`,
	`"str"`,
	"{\"Command\":\"\xc3\"}",
	`{"Command":"guest-ping","x":"` + strings.Repeat(`\\`, 64) + `"}`,
	`{"Command":"guest-ping","x":"` + strings.Repeat(`\"`, 64) + `"}`,
	strings.Repeat("{\"a\":", 2000) + "1" + strings.Repeat("}", 2000),
	`{"Command":"guest-ping","unterminated`,
	"\x00\x01\x02",
	"",
}

// FuzzMonitor: whatever the bytes, and however they are cut, the scanner
// finds the same end, and a whole request gets one well-formed reply.
func FuzzMonitor(f *testing.F) {
	for _, s := range monitorSeeds {
		f.Add([]byte(s), 3)
	}
	m := &monitorDialect{}
	f.Fuzz(func(t *testing.T, in []byte, piece int) {
		if piece <= 0 || piece > len(in) {
			piece = max(len(in), 1)
		}
		var whole monitorScanner
		wantEnd, wantBad := whole.scan(in)
		var cut monitorScanner
		end, bad, off := -1, false, 0
		for i := 0; i < len(in) && end < 0 && !bad; i += piece {
			j := min(i+piece, len(in))
			e, b := cut.scan(in[i:j])
			if e >= 0 {
				end = off + e
			}
			bad, off = b, j
		}
		if end != wantEnd || bad != wantBad {
			t.Fatalf("%q: in pieces of %d end %d bad %v, whole %d %v", in, piece, end, bad, wantEnd, wantBad)
		}
		r := checkMonitorReply(t, in, m.HandleMessage(context.Background(), monitorDispatcher{}, in))
		if end >= 0 && !bad && json.Valid(in[:end]) && utf8Object(in[:end]) {
			var status int
			_ = json.Unmarshal(r["Status"], &status)
			if status == monitorBadRequest {
				t.Fatalf("%q: a valid object refused as bad JSON", in[:end])
			}
		}
	})
}

// utf8Object: b is a UTF-8 JSON object whose routing member, if any, is a
// string: a request the monitor must not call bad JSON.
func utf8Object(b []byte) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil || m == nil || !bytes.Equal(b, bytes.ToValidUTF8(b, nil)) {
		return false
	}
	key, ok := m["Command"]
	if !ok {
		key, ok = m["Name"]
	}
	var s string
	return !ok || json.Unmarshal(key, &s) == nil
}

// FuzzMonitorStream: whatever a program writes on a connection to the
// monitor (then ending its side), a real engine session answers with
// exactly one well-formed reply and closes, the client reading to EOF
// without a reset.
func FuzzMonitorStream(f *testing.F) {
	for _, s := range monitorSeeds {
		f.Add([]byte(s))
	}
	c := newEngineChannel(f, "monitor", 1<<20)
	f.Fuzz(func(t *testing.T, in []byte) {
		checkMonitorReply(t, in, c.session(t, in))
	})
}
