package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// monitorServer answers each connection as the command monitor's rules say:
// read one JSON value, write one reply, close. It records what each client
// sent, and whatever came after the value within a moment.
type monitorServer struct {
	t      *testing.T
	path   string
	got    chan []byte
	extra  chan []byte
	replyF func(req map[string]json.RawMessage) string
}

func newMonitorServer(t *testing.T, reply func(req map[string]json.RawMessage) string) *monitorServer {
	t.Helper()
	s := &monitorServer{t: t, path: filepath.Join(t.TempDir(), "commands.sock"), got: make(chan []byte, 8), extra: make(chan []byte, 8), replyF: reply}
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *monitorServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	dec := json.NewDecoder(c)
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		s.got <- nil
		return
	}
	s.got <- raw
	// Anything after the value (a newline) shows within a moment.
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	rest, _ := io.ReadAll(io.MultiReader(dec.Buffered(), c))
	s.extra <- rest
	var req map[string]json.RawMessage
	_ = json.Unmarshal(raw, &req)
	c.Write([]byte(s.replyF(req)))
}

func runCall(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(append([]string{"-c", filepath.Join(t.TempDir(), "none.hcl")}, args...))
	err = root.Execute()
	return out.String(), err
}

func TestCallWritesOneObjectWithoutNewline(t *testing.T) {
	s := newMonitorServer(t, func(map[string]json.RawMessage) string {
		return `{"Status":0,"StatusMessage":"","id":"debian","pretty-name":"Debian GNU/Linux 12"}`
	})
	out, err := runCall(t, "call", "--socket", s.path, "guest-get-osinfo", `{"verbose": true, "n": [1, 2]}`)
	if err != nil {
		t.Fatal(err)
	}
	var sent map[string]any
	if err := json.Unmarshal(<-s.got, &sent); err != nil {
		t.Fatal(err)
	}
	if sent["Command"] != "guest-get-osinfo" || sent["verbose"] != true || len(sent["n"].([]any)) != 2 || len(sent) != 3 {
		t.Errorf("request %v", sent)
	}
	if extra := <-s.extra; len(extra) != 0 {
		t.Errorf("the client sent %q after its request", extra)
	}
	var printed map[string]string
	if err := json.Unmarshal([]byte(out), &printed); err != nil || printed["id"] != "debian" || len(printed) != 2 {
		t.Errorf("printed %q (%v): want the result members without Status", out, err)
	}
}

func TestCallResultShapes(t *testing.T) {
	for reply, want := range map[string]string{
		`{"Status":0,"StatusMessage":""}`:                        "",
		`{"Status":0,"StatusMessage":"","Result":"vm-1"}`:        "vm-1\n",
		`{"Status":0,"StatusMessage":"","Result":[1,2]}`:         "[\n  1,\n  2\n]\n",
		`{"Status":0,"StatusMessage":"ok","host-name":"vm-1"}`:   "{\n  \"host-name\": \"vm-1\"\n}\n",
		`{"StatusMessage":"","Status":0,"Result":{"a":null}}`:    "{\n  \"a\": null\n}\n",
		`{"Status":0,"StatusMessage":"","Result":1,"other":2}`:   "{\n  \"Result\": 1,\n  \"other\": 2\n}\n",
		`{"Status":0,"StatusMessage":"","Result":"tab\there"}  `: "tab\there\n",
	} {
		s := newMonitorServer(t, func(map[string]json.RawMessage) string { return reply })
		out, err := runCall(t, "call", "--socket", s.path, "x")
		if err != nil || out != want {
			t.Errorf("reply %s: printed %q, %v; want %q", reply, out, err, want)
		}
	}
}

func TestCallFailures(t *testing.T) {
	s := newMonitorServer(t, func(req map[string]json.RawMessage) string {
		return `{"Status":101,"StatusMessage":"Could not find a handler for the requested command"}`
	})
	_, err := runCall(t, "call", "--socket", s.path, "no-such-command")
	if err == nil || err.Error() != "no-such-command: Could not find a handler for the requested command (Status 101)" {
		t.Errorf("non-zero Status: %v", err)
	}
	// --raw prints the reply as sent and leaves the Status to the caller.
	out, err := runCall(t, "call", "--raw", "--socket", s.path, "no-such-command")
	if err != nil || !strings.HasPrefix(out, `{"Status":101,`) {
		t.Errorf("--raw: %q, %v", out, err)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"x", "[1]"}, "must be a JSON object"},
		{[]string{"x", "{} {}"}, "more after it"},
		{[]string{"x", `{"Command":"y"}`}, `must not contain "Command"`},
		{[]string{"x", `{"Name":"y"}`}, `must not contain "Name"`},
	} {
		_, err := runCall(t, append([]string{"call", "--socket", s.path}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}

	_, err = runCall(t, "call", "--socket", filepath.Join(t.TempDir(), "absent.sock"), "guest-ping")
	if err == nil || !strings.Contains(err.Error(), "connect to the agent's command monitor") {
		t.Errorf("no agent: %v", err)
	}
	silent := newMonitorServer(t, func(map[string]json.RawMessage) string { return "" })
	_, err = runCall(t, "call", "--socket", silent.path, "guest-ping")
	if err == nil || !strings.Contains(err.Error(), "without a reply") {
		t.Errorf("closed without a reply: %v", err)
	}
	garbage := newMonitorServer(t, func(map[string]json.RawMessage) string { return `{"StatusMessage":"x"}` })
	_, err = runCall(t, "call", "--socket", garbage.path, "guest-ping")
	if err == nil || !strings.Contains(err.Error(), "no numeric Status") {
		t.Errorf("reply without Status: %v", err)
	}
}

func TestCallTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "commands.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts and never answers
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	start := time.Now()
	_, err = runCall(t, "call", "--timeout", "200ms", "--socket", path, "guest-ping")
	if err == nil || !strings.Contains(err.Error(), "no reply") || time.Since(start) > 5*time.Second {
		t.Errorf("timeout: %v after %v", err, time.Since(start))
	}
}

// The socket comes from agent.hcl when --socket is not given.
func TestCallSocketFromConfig(t *testing.T) {
	s := newMonitorServer(t, func(map[string]json.RawMessage) string { return `{"Status":0,"StatusMessage":""}` })
	cfg := filepath.Join(t.TempDir(), "agent.hcl")
	if err := os.WriteFile(cfg, []byte("command_monitor {\n enabled = true\n path = \""+s.path+"\"\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := monitorSocket(cfg); got != s.path {
		t.Errorf("socket %q, want %q", got, s.path)
	}
	if got := monitorSocket(filepath.Join(t.TempDir(), "absent.hcl")); got != "/run/guest-agent/commands.sock" {
		t.Errorf("default socket %q", got)
	}
	root := newRootCmd()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"-c", cfg, "call", "guest-ping"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if req := <-s.got; string(req) != `{"Command":"guest-ping"}` {
		t.Errorf("request %s", req)
	}
}
