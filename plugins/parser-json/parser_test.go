package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/shared/engine"
	"github.com/guest-agent/guest-agent/shared/rpcplugin"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
)

// split returns the values (or problems) the splitter emits for input fed in
// pieces of the given size.
func split(input []byte, piece int, max int64) []string {
	sp := &splitter{max: max}
	var out []string
	for len(input) > 0 {
		n := min(piece, len(input))
		sp.feed(input[:n], func(v []byte, _ bool, problem string) {
			if problem != "" {
				out = append(out, "PROBLEM:"+problem)
			} else {
				out = append(out, string(v))
			}
		})
		input = input[n:]
	}
	return out
}

func TestSplitter(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{`{"a":1}{"b":2}`, []string{`{"a":1}`, `{"b":2}`}},
		{" \n{\"a\":\"}{\\\"\"}\n", []string{`{"a":"}{\""}`}},
		{`[1,{"x":[]}] "str" 12 `, []string{`[1,{"x":[]}]`, `"str"`, `12`}},
		{"{\"exec\xff{\"a\":1}", []string{`{"a":1}`}},
		{`{"a":{"b":{"c":1}}}`, []string{`{"a":{"b":{"c":1}}}`}},
	}
	for _, c := range cases {
		for _, piece := range []int{1, 2, 3, 7, 1000} {
			got := split([]byte(c.in), piece, 1<<20)
			if strings.Join(got, "|") != strings.Join(c.want, "|") {
				t.Errorf("split(%q, piece %d) = %q, want %q", c.in, piece, got, c.want)
			}
		}
	}
}

func TestSplitterLimit(t *testing.T) {
	in := `{"big":"` + strings.Repeat("x", 100) + `"}{"ok":1}`
	got := split([]byte(in), 5, 50)
	if len(got) != 2 || !strings.HasPrefix(got[0], "PROBLEM:") || got[1] != `{"ok":1}` {
		t.Fatalf("limit: %q", got)
	}
}

// echoDispatcher stands in for the engine in dialect unit tests; the real
// engine is covered by the end-to-end tests over real plugin processes.
type echoDispatcher struct{}

func (echoDispatcher) Dispatch(_ context.Context, command string, args json.RawMessage) *sdk.Outcome {
	switch command {
	case "version":
		return &sdk.Outcome{Result: json.RawMessage(`"1.2.3"`)}
	case "keyinit":
		return &sdk.Outcome{Result: json.RawMessage(`{"returncode":"D0","message":"12345"}`)}
	case "fail":
		return &sdk.Outcome{Err: &pb.Error{Class: sdk.ClassGenericError, Desc: "it failed"}}
	case "blob":
		return &sdk.Outcome{Result: json.RawMessage(`{"count":3,"eof":true}`), Blob: []byte("abc"), BlobField: "buf-b64"}
	case "guest-ping":
		return &sdk.Outcome{Result: json.RawMessage(`{}`)}
	}
	return &sdk.Outcome{Err: &pb.Error{Class: sdk.ClassCommandNotFound, Desc: "The command " + command + " has not been found"}}
}
func (echoDispatcher) Commands() []sdk.CommandInfo { return nil }
func (echoDispatcher) AgentVersion() string        { return "test" }
func (echoDispatcher) Caller() *pb.Caller          { return &pb.Caller{} }
func (echoDispatcher) Logger() hclog.Logger        { return hclog.NewNullLogger() }

func TestQGAEncoding(t *testing.T) {
	q := &qgaDialect{}
	got := string(q.HandleMessage(context.Background(), echoDispatcher{}, []byte(`{"execute":"blob","id":"x"}`)))
	want := `{"return": {"buf-b64": "YWJj", "count":3,"eof":true}, "id": "x"}` + "\n"
	if got != want {
		t.Fatalf("blob reply %q, want %q", got, want)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(got), &v); err != nil {
		t.Fatal(err)
	}
}

func TestNova(t *testing.T) {
	n := &novaDialect{}
	for _, c := range []struct{ in, want string }{
		{`{"name":"version","value":"agent"}`, `{"returncode":"0","message":"1.2.3"}`},
		{`{"name":"keyinit","value":"999"}`, `{"returncode":"D0","message":"12345"}`},
		{`{"name":"nope","value":""}`, `{"returncode":"404","message":"No such agent command 'nope'"}`},
		{`{"name":"fail"}`, `{"returncode":"500","message":"it failed"}`},
		{`{"value":"x"}`, `{"returncode":"500","message":"request has no command name"}`},
		{`{bad`, ``},
		{"{\"name\":\"\xff\"}", `{"returncode":"500","message":"invalid JSON: not UTF-8"}`},
	} {
		got := string(n.HandleMessage(context.Background(), echoDispatcher{}, []byte(c.in)))
		if c.want == "" {
			if !strings.Contains(got, `"returncode":"500"`) {
				t.Errorf("%s → %s, want a 500", c.in, got)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s → %s, want %s", c.in, got, c.want)
		}
	}
}

// FuzzQGA: any input, in any chunking, splits the same way, and every value
// gets exactly one well-formed reply line.
func FuzzQGA(f *testing.F) {
	for _, s := range []string{`{"execute":"guest-ping"}`, `{"execute":"blob","id":[1]}{`, "\xff{\"a\":\"\\\"\"}", `[{"x":]]`, `"\u0000"`, "{\"execute\":\"guest-ping\",\"arguments\":{\"\xc3\"}}",
		"{\"execute\":\"guest-ping\",\"id\":[1,\n2]}", `{"execute": null}`} {
		f.Add([]byte(s), 3)
	}
	q := &qgaDialect{}
	f.Fuzz(func(t *testing.T, in []byte, piece int) {
		if piece <= 0 || piece > len(in)+1 {
			piece = len(in) + 1
		}
		whole := split(in, len(in)+1, 1<<16)
		pieces := split(in, piece, 1<<16)
		if strings.Join(whole, "\x00") != strings.Join(pieces, "\x00") {
			t.Fatalf("chunking changed the split: %q vs %q", whole, pieces)
		}
		for _, v := range whole {
			if strings.HasPrefix(v, "PROBLEM:") {
				continue
			}
			reply := q.HandleMessage(context.Background(), echoDispatcher{}, []byte(v))
			if !bytes.HasSuffix(reply, []byte("\n")) || bytes.Count(reply, []byte("\n")) != 1 {
				t.Fatalf("reply to %q is not one line: %q", v, reply)
			}
			var r map[string]json.RawMessage
			if err := json.Unmarshal(bytes.TrimPrefix(reply, []byte{0xff}), &r); err != nil {
				t.Fatalf("reply to %q is not JSON: %q", v, reply)
			}
			if _, ok := r["return"]; !ok {
				if _, ok := r["error"]; !ok {
					t.Fatalf("reply to %q has neither return nor error: %q", v, reply)
				}
			}
		}
	})
}

// FuzzNova: every input gets one well-formed nova reply.
func FuzzNova(f *testing.F) {
	for _, s := range []string{`{"name":"version","value":"agent"}`, `{"name":5}`, `[]`, `{"name":"x","value":{"a":[1,2]}}`} {
		f.Add([]byte(s))
	}
	n := &novaDialect{}
	f.Fuzz(func(t *testing.T, in []byte) {
		var r novaReply
		if err := json.Unmarshal(n.HandleMessage(context.Background(), echoDispatcher{}, in), &r); err != nil || r.ReturnCode == "" {
			t.Fatalf("reply to %q: %+v %v", in, r, err)
		}
	})
}

// BenchmarkSplitterEscapes feeds requests whose string is nothing but
// escapes, the worst case of a scanner that looks ahead for '"' and '\'
// (it was quadratic: 1 MiB took over a second). The cost per byte must not
// grow with the size.
func BenchmarkSplitterEscapes(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 4 << 20} {
		req := []byte(`{"execute":"guest-ping","arguments":{"x":"` + strings.Repeat(`\\`, size/2) + `"}}`)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(req)))
			sp := &splitter{max: 64 << 20, pool: &dataplane.BufferPool{}}
			for i := 0; i < b.N; i++ {
				n := 0
				sp.feed(req, func([]byte, bool, string) { n++ })
				if n != 1 {
					b.Fatalf("%d values", n)
				}
			}
		})
	}
}

// BenchmarkSplitterBase64 is the common bulk case: one long string without
// escapes (guest-file-write).
func BenchmarkSplitterBase64(b *testing.B) {
	req := []byte(`{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"` + strings.Repeat("QUJD", 1<<18) + `"}}`)
	b.SetBytes(int64(len(req)))
	sp := &splitter{max: 64 << 20, pool: &dataplane.BufferPool{}}
	for i := 0; i < b.N; i++ {
		sp.feed(req, func([]byte, bool, string) {})
	}
}

// An id is echoed on the reply's line whatever whitespace it holds, and
// execute must be a string (null included), as qemu-ga 7.2 answers.
func TestQGAEnvelopeEdges(t *testing.T) {
	d := &qgaDialect{}
	e := engine.New("parser-json", []sdk.Dialect{d}, hclog.NewNullLogger(), nil)
	for _, tc := range []struct{ in, want string }{
		{"{\"execute\":\"guest-ping\",\"id\":[1,\n2, {\"a\" :  \"b\\n\"}]}", `{"return": {}, "id": [1, 2, {"a": "b\n"}]}` + "\n"},
		{`{"execute":"guest-ping","id":"x"}`, `{"return": {}, "id": "x"}` + "\n"},
		{`{"execute": null}`, `{"error": {"class":"GenericError","desc":"QMP input member 'execute' must be a string"}}` + "\n"},
		{`{"execute": 5, "id": 1}`, `{"error": {"class":"GenericError","desc":"QMP input member 'execute' must be a string"}, "id": 1}` + "\n"},
	} {
		resp, err := e.ParseRequest(context.Background(), &pb.ParseRequestRequest{Dialect: "qga", Request: []byte(tc.in)})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(resp.Response); got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

// The supervisor refuses qga's core command names from command plugins
// (rpcplugin.CoreCommands); they are the qga dialect's local commands.
func TestQGALocalCommandsAreTheCoreCommands(t *testing.T) {
	var local []string
	for _, c := range (&qgaDialect{}).Options().LocalCommands {
		local = append(local, c.Name)
	}
	core := rpcplugin.CoreCommands()
	sort.Strings(local)
	sort.Strings(core)
	if strings.Join(local, ",") != strings.Join(core, ",") {
		t.Fatalf("qga's local commands %v, the supervisor's core commands %v", local, core)
	}
}
