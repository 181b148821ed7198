package negotiator

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeScript(t *testing.T, dir, name, body string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

// testCommands is a command directory with the cases the issue names.
func testCommands(t *testing.T) string {
	dir := t.TempDir()
	writeScript(t, dir, "hello", "#!/bin/sh\necho \"  hello $*  \"\n", 0o755)
	writeScript(t, dir, "upper", "#!/bin/sh\ntr a-z A-Z\n", 0o755)
	writeScript(t, dir, "lines", "#!/bin/sh\nprintf ' one\\ntwo \\n'\n", 0o755)
	writeScript(t, dir, "fails", "#!/bin/sh\necho partial; echo 'it broke' >&2; exit 3\n", 0o755)
	writeScript(t, dir, "unicode", "#!/bin/sh\nprintf 'h\\303\\251 \\360\\237\\230\\200 \\346\\227\\245'\n", 0o755)
	writeScript(t, dir, "big", "#!/bin/sh\nhead -c 1500000 /dev/zero | tr '\\0' x\n", 0o755)
	writeScript(t, dir, "guest", "#!/bin/sh\necho \"$NEGOTIATOR_GUEST\"\n", 0o755)
	writeScript(t, dir, "slow", "#!/bin/sh\nsleep 30\n", 0o755)
	writeScript(t, dir, "plain", "not executable\n", 0o644)
	return dir
}

// serveOnSocket serves svc on a real unix socket and returns the peer's
// connection and the server's end result.
func serveOnSocket(t *testing.T, svc Service, o ServeOptions) (*peer, <-chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		// The listener closes after the accept: closing it first would
		// reset the connection still in its backlog.
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- Serve(ctx, c, svc, o)
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return newPeer(t, conn), done
}

func hostService(t *testing.T) Service {
	return RunnerService{
		Runner: &Runner{Dirs: []string{testCommands(t)}, Builtins: DefaultBuiltinSources().Builtins(), Timeout: 2 * time.Second},
		Env:    []string{"NEGOTIATOR_GUEST=vm-ü1"},
	}
}

func TestServeProtocol(t *testing.T) {
	p, done := serveOnSocket(t, hostService(t), ServeOptions{MaxMessageBytes: 1 << 20})

	var names []string
	p.request(map[string]any{"method": "list_commands", "args": []any{}, "kw": map[string]any{}})
	p.result(&names)
	if strings.Join(names, ",") != "big,fails,find-disk-usage,find-distribution-codename,find-distribution-release,find-distributor-id,find-ip-addresses,guest,hello,lines,slow,unicode,upper" {
		t.Fatalf("list_commands: %v", names)
	}

	var out string
	p.request(map[string]any{"method": "execute", "args": []any{"hello", "a b"}})
	if p.result(&out); out != "hello a b" {
		t.Fatalf("single line, stripped: %q", out)
	}
	// The seed document's spelling, and input on stdin.
	p.request(map[string]any{"command": "execute", "arguments": []any{"upper"}, "keyword-arguments": map[string]any{"input": "shout ü"}})
	if p.result(&out); out != "SHOUT ü" {
		t.Fatalf("input: %q", out)
	}
	p.request(map[string]any{"method": "execute", "args": []any{"lines"}})
	if p.result(&out); out != " one\ntwo \n" {
		t.Fatalf("several lines verbatim: %q", out)
	}
	p.request(map[string]any{"method": "execute", "args": []any{"unicode"}})
	if p.result(&out); out != "hé 😀 日" {
		t.Fatalf("non-ASCII: %q", out)
	}
	p.request(map[string]any{"method": "execute", "args": []any{"guest"}})
	if p.result(&out); out != "vm-ü1" {
		t.Fatalf("NEGOTIATOR_GUEST: %q", out)
	}
	p.request(map[string]any{"method": "execute", "args": []any{"big"}})
	if p.result(&out); len(out) != 1500000 || strings.Trim(out, "x") != "" {
		t.Fatalf("reply over 1 MiB: %d bytes", len(out))
	}
	p.request(map[string]any{"method": "execute", "args": []any{"fails"}})
	p.failure("'fails'", "exit status 3", "it broke")
	p.request(map[string]any{"method": "execute", "args": []any{"nope"}})
	p.failure("'nope' not found")
	p.request(map[string]any{"method": "execute", "args": []any{"../../bin/sh", "-c", "echo escaped"}})
	p.failure("'sh' not found")
	p.request(map[string]any{"method": "execute", "args": []any{"plain"}})
	p.failure("'plain' not found")
	p.request(map[string]any{"method": "execute", "args": []any{"slow"}})
	p.failure("'slow' did not finish in time")
	p.request(map[string]any{"method": nil})
	p.failure("no method")
	p.request(map[string]any{"method": "enter_main_loop"})
	p.failure("Method enter_main_loop not supported")
	p.request(map[string]any{"method": "execute", "args": []any{"hello"}, "kw": map[string]any{"shell": true}})
	p.failure("unexpected keyword argument 'shell'")
	p.send("5\n{\"x\":")
	p.failure("invalid request")

	// A length that is not a number: an error, the line is skipped, the
	// next request is served.
	p.send("twelve\n")
	p.failure("expected a byte count")
	p.send(strings.Repeat("9", 40) + "\n")
	p.failure("length line is longer")
	p.send("2000000\n" + strings.Repeat(" ", 2000000))
	p.failure("over the limit")
	p.request(map[string]any{"method": "execute", "args": []any{"hello"}})
	if p.result(&out); out != "hello" {
		t.Fatalf("after bad frames: %q", out)
	}

	// Built-in commands.
	p.request(map[string]any{"method": "execute", "args": []any{"find-ip-addresses"}})
	if p.result(&out); !strings.Contains(out, "127.0.0.1/8") {
		t.Fatalf("find-ip-addresses: %q", out)
	}

	// The peer leaves mid-frame: the server ends, no hang.
	p.send("100\n{\"method\"")
	p.conn.(*net.UnixConn).CloseWrite()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "middle of a request") {
			t.Fatalf("server after a cut frame: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server hangs after a cut frame")
	}
}

func TestServeFrameTimeout(t *testing.T) {
	p, done := serveOnSocket(t, hostService(t), ServeOptions{FrameTimeout: 300 * time.Millisecond})
	p.send("50\n{\"method\":")
	p.failure("did not arrive whole")
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("no error after an incomplete request")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server hangs on an incomplete request")
	}
}

func TestServeCancel(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		c, _ := ln.Accept()
		done <- Serve(ctx, c, hostService(t), ServeOptions{})
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve ignores its context")
	}
}

func TestEscapeNonASCII(t *testing.T) {
	in := []byte(`{"a":"hé 😀 \u0001 日","b":1}`)
	got := string(EscapeNonASCII(in))
	want := `{"a":"h\u00e9 \ud83d\ude00 \u0001 \u65e5","b":1}`
	if got != want {
		t.Fatalf("got %s want %s", got, want)
	}
}
