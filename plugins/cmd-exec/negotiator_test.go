package main

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

func commandsDir(t *testing.T) string {
	dir := t.TempDir()
	writeScript(t, dir, "hello", "#!/bin/sh\necho hello \"$@\"\n", 0o755)
	writeScript(t, dir, "upper", "#!/bin/sh\ntr a-z A-Z\n", 0o755)
	writeScript(t, dir, "fails", "#!/bin/sh\necho partial; echo oops >&2; exit 1\n", 0o755)
	writeScript(t, dir, "chatty", "#!/bin/sh\nhead -c 5000 /dev/zero\n", 0o755)
	writeScript(t, dir, "slow", "#!/bin/sh\nsleep 30\n", 0o755)
	writeScript(t, dir, "not-executable", "#!/bin/sh\necho no\n", 0o644)
	writeScript(t, dir, ".hidden", "#!/bin/sh\necho no\n", 0o755)
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// result runs a command whose result may be any JSON value.
func (a *testAgent) result(ctx context.Context, cmd, args string) (string, *pb.Error) {
	resp := a.p.Run(ctx, &pb.RunRequest{Command: cmd, ArgsJson: []byte(args)})
	return string(resp.ResultJson), resp.Error
}

func TestListCommands(t *testing.T) {
	dir := commandsDir(t)
	a := newTestAgent(t, jsonArgs(t, map[string]any{"commands_dir": dir}))
	got, e := a.result(context.Background(), "list-commands", `{}`)
	if e != nil || got != `["chatty","fails","find-disk-usage","find-distribution-codename","find-distribution-release","find-distributor-id","find-ip-addresses","hello","slow","upper"]` {
		t.Fatalf("list-commands: %s %v", got, e)
	}
	// Read at every call.
	writeScript(t, dir, "added", "#!/bin/sh\n", 0o755)
	if got, _ := a.result(context.Background(), "list-commands", `{}`); !strings.HasPrefix(got, `["added",`) {
		t.Fatalf("after adding a command: %s", got)
	}
	none := newTestAgent(t, `{"commands_dir":""}`)
	if got, e := none.result(context.Background(), "list-commands", `{}`); e != nil || !strings.HasPrefix(got, `["find-disk-usage",`) {
		t.Fatalf("without commands_dir, the built-in commands: %s %v", got, e)
	}
}

func TestExecute(t *testing.T) {
	a := newTestAgent(t, jsonArgs(t, map[string]any{"commands_dir": commandsDir(t), "max_output_bytes": 1000}))
	ctx := context.Background()
	cases := []struct{ args, result, err string }{
		{`{"command":["hello","a b","$HOME"]}`, `"hello a b $HOME"`, ""},
		{`{"command":["upper"],"input":"shout"}`, `"SHOUT"`, ""},
		{`{"command":["fails"]}`, "", "execute: command 'fails' failed: exit status 1: oops"},
		{`{"command":["chatty"]}`, "", "execute: output of command 'chatty' exceeds 1000 bytes"},
		{`{"command":["nope"]}`, "", "execute: command 'nope' not found (see list_commands)"},
		{`{"command":["not-executable"]}`, "", "execute: command 'not-executable' not found (see list_commands)"},
		{`{"command":[".hidden"]}`, "", "execute: invalid command name \".hidden\""},
		{`{"command":["../../bin/sh","-c","echo escaped"]}`, "", "execute: command 'sh' not found (see list_commands)"},
		{`{"command":["../hello"]}`, `"hello"`, ""},
		{`{"command":["subdir"]}`, "", "execute: command 'subdir' not found (see list_commands)"},
		{`{"command":["find-distributor-id"]}`, "", ""},
		{`{"command":[]}`, "", "Invalid parameter 'command'"},
		{`{"command":"hello"}`, "", "Invalid parameter type for 'command', expected: array"},
		{`{}`, "", "Parameter 'command' is missing"},
	}
	for _, c := range cases {
		got, e := a.result(ctx, "execute", c.args)
		switch {
		case c.err != "" && (e == nil || e.Desc != c.err):
			t.Errorf("%s: got %.100s %v, want error %q", c.args, got, e, c.err)
		case c.err == "" && (e != nil || (c.result != "" && got != c.result)):
			t.Errorf("%s: got %.100s %v, want %s", c.args, got, e, c.result)
		}
	}
	// The request's deadline ends a slow command and its group.
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, e := a.result(tctx, "execute", `{"command":["slow"]}`)
	if e == nil || !strings.Contains(e.Desc, "did not finish in time") || time.Since(start) > 3*time.Second {
		t.Fatalf("slow command: %v after %s", e, time.Since(start))
	}
	waitFor(t, "no zombie children", 5*time.Second, func() bool { return len(zombieChildren()) == 0 })

	none := newTestAgent(t, `{"commands_dir":""}`)
	if _, e := none.result(ctx, "execute", `{"command":["hello"]}`); e == nil || !strings.Contains(e.Desc, "'hello' not found") {
		t.Fatalf("without commands_dir: %v", e)
	}
	// execute_timeout (negotiator's 10 s by default) ends a slow command.
	short := newTestAgent(t, jsonArgs(t, map[string]any{"commands_dir": commandsDir(t), "execute_timeout": "300ms"}))
	start = time.Now()
	if _, e := short.result(ctx, "execute", `{"command":["slow"]}`); e == nil || !strings.Contains(e.Desc, "did not finish in time") || time.Since(start) > 5*time.Second {
		t.Fatalf("execute_timeout: %v after %s", e, time.Since(start))
	}
}

func TestCommandsDeclared(t *testing.T) {
	p, _ := newPlugin()
	var names []string
	for _, c := range p.Info().Commands {
		names = append(names, c.Name)
		if !c.SuccessResponse || c.ArgsSchema == "" {
			t.Errorf("%s: %+v", c.Name, c)
		}
	}
	if want := []string{"guest-exec", "guest-exec-status", "guest-exec-terminate", "guest-exec-read", "guest-exec-write", "list-commands", "execute"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("commands %v, want %v", names, want)
	}
}
