package hostd

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/domains"
	"github.com/guest-agent/guest-agent/shared/negotiator"
)

// guest is a simulated guest: the host side of its guest-to-host channel
// is a unix socket QEMU listens on; the daemon connects to it. Its peer
// code is written from the protocol text (length, "\n", JSON), not from
// the package it tests.
type guest struct {
	t     *testing.T
	ln    net.Listener
	conns chan net.Conn
}

func newGuest(t *testing.T, path string) *guest {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := &guest{t: t, ln: ln, conns: make(chan net.Conn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.conns <- c
		}
	}()
	t.Cleanup(g.stop)
	return g
}

func (g *guest) stop() { g.ln.Close() }

// accept waits for the daemon's connection.
func (g *guest) accept(within time.Duration) *wire {
	g.t.Helper()
	select {
	case c := <-g.conns:
		g.t.Cleanup(func() { c.Close() })
		return &wire{t: g.t, c: c, r: bufio.NewReader(c)}
	case <-time.After(within):
		g.t.Fatalf("the daemon did not connect to %s within %s", g.ln.Addr(), within)
		return nil
	}
}

type wire struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (w *wire) raw(s string) {
	w.t.Helper()
	if _, err := io.WriteString(w.c, s); err != nil {
		w.t.Fatal(err)
	}
}

func (w *wire) call(method string, args []any, kw map[string]any) {
	w.t.Helper()
	b, _ := json.Marshal(map[string]any{"method": method, "args": args, "kw": kw})
	w.raw(fmt.Sprintf("%d\n%s", len(b), b))
}

type answer struct {
	Success bool            `json:"success"`
	Result  json.RawMessage `json:"result"`
	Error   string          `json:"error"`
}

func (w *wire) answer() answer {
	w.t.Helper()
	w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := w.r.ReadString('\n')
	if err != nil {
		w.t.Fatalf("length line: %v", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		w.t.Fatalf("length line %q", line)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(w.r, body); err != nil {
		w.t.Fatalf("body: %v", err)
	}
	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		w.t.Fatalf("reply %.100q: %v", body, err)
	}
	return a
}

func (w *wire) output() string {
	w.t.Helper()
	a := w.answer()
	var s string
	if !a.Success || json.Unmarshal(a.Result, &s) != nil {
		w.t.Fatalf("want a string result, got %+v", a)
	}
	return s
}

func (w *wire) failure(contains string) {
	w.t.Helper()
	if a := w.answer(); a.Success || !strings.Contains(a.Error, contains) {
		w.t.Fatalf("want an error containing %q, got %+v", contains, a)
	}
}

func startDaemon(t *testing.T, dir string) *Daemon {
	t.Helper()
	cmds := t.TempDir()
	for name, body := range map[string]string{
		"whoami":  "#!/bin/sh\necho \"$NEGOTIATOR_GUEST\"\n",
		"upper":   "#!/bin/sh\ntr a-z A-Z\n",
		"fails":   "#!/bin/sh\necho bad input >&2; exit 7\n",
		"unicode": "#!/bin/sh\nprintf '\\342\\234\\223 d\\303\\251j\\303\\240'\n",
		"big":     "#!/bin/sh\nhead -c 2000000 /dev/zero | tr '\\0' y\n",
		"slow":    "#!/bin/sh\nsleep 3; echo late\n",
	} {
		if err := os.WriteFile(filepath.Join(cmds, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d, err := New(Options{
		Source:     domains.SocketDir{Dir: dir},
		Runner:     &negotiator.Runner{Dirs: []string{cmds}, Timeout: 10 * time.Second},
		Rescan:     100 * time.Millisecond,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Serve: negotiator.ServeOptions{MaxMessageBytes: 1 << 20, FrameTimeout: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the daemon did not stop")
		}
	})
	return d
}

func TestDaemonServesGuests(t *testing.T) {
	dir := t.TempDir()
	a := newGuest(t, filepath.Join(dir, "alpha.sock"))
	startDaemon(t, dir)
	wa := a.accept(5 * time.Second)

	wa.call("list_commands", nil, nil)
	var names []string
	if r := wa.answer(); !r.Success || json.Unmarshal(r.Result, &names) != nil || strings.Join(names, " ") != "big fails slow unicode upper whoami" {
		t.Fatalf("list_commands: %+v", r)
	}
	wa.call("execute", []any{"whoami"}, nil)
	if got := wa.output(); got != "alpha" {
		t.Fatalf("NEGOTIATOR_GUEST: %q", got)
	}
	wa.call("execute", []any{"upper"}, map[string]any{"input": "host, über"})
	if got := wa.output(); got != "HOST, üBER" {
		t.Fatalf("input: %q", got)
	}
	wa.call("execute", []any{"fails"}, nil)
	wa.failure("command 'fails' failed: exit status 7: bad input")
	wa.call("execute", []any{"missing"}, nil)
	wa.failure("command 'missing' not found")
	wa.call("execute", []any{"../../bin/sh", "-c", "id"}, nil)
	wa.failure("command 'sh' not found")
	wa.call("execute", []any{"unicode"}, nil)
	if got := wa.output(); got != "✓ déjà" {
		t.Fatalf("non-ASCII: %q", got)
	}
	wa.call("execute", []any{"big"}, nil)
	if got := wa.output(); len(got) != 2000000 {
		t.Fatalf("reply over 1 MiB: %d bytes", len(got))
	}
	wa.raw("x1\n")
	wa.failure("expected a byte count")
	wa.call("execute", []any{"whoami"}, nil)
	if got := wa.output(); got != "alpha" {
		t.Fatalf("after a malformed length: %q", got)
	}

	// A slow command of one guest holds up no other guest.
	b := newGuest(t, filepath.Join(dir, "beta.sock"))
	wb := b.accept(5 * time.Second)
	wa.call("execute", []any{"slow"}, nil)
	start := time.Now()
	wb.call("execute", []any{"whoami"}, nil)
	if got := wb.output(); got != "beta" || time.Since(start) > 2*time.Second {
		t.Fatalf("beta while alpha's command runs: %q after %s", got, time.Since(start))
	}
	if got := wa.output(); got != "late" {
		t.Fatalf("slow: %q", got)
	}

	// The guest disconnects mid-frame: the daemon connects again.
	wa.raw("50\n{\"method\": \"exe")
	wa.c.Close()
	wa2 := a.accept(5 * time.Second)
	wa2.call("execute", []any{"whoami"}, nil)
	if got := wa2.output(); got != "alpha" {
		t.Fatalf("after reconnecting: %q", got)
	}
}

func TestDaemonFollowsGuests(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir)
	waitFor(t, "no guests", func() bool { return len(d.Serving()) == 0 })

	// A guest without the channel (a directory without the socket) is
	// looked at again and served once the channel appears.
	os.Mkdir(filepath.Join(dir, "gamma"), 0o755)
	time.Sleep(300 * time.Millisecond)
	if len(d.Serving()) != 0 {
		t.Fatalf("serving a guest without the channel: %v", d.Serving())
	}
	g := newGuest(t, filepath.Join(dir, "gamma", negotiator.GuestToHostChannel))
	w := g.accept(5 * time.Second)
	w.call("execute", []any{"whoami"}, nil)
	if got := w.output(); got != "gamma" {
		t.Fatalf("gamma: %q", got)
	}

	// A guest that stops is dropped, its connection closed.
	g.stop()
	os.RemoveAll(filepath.Join(dir, "gamma"))
	waitFor(t, "gamma dropped", func() bool { return len(d.Serving()) == 0 })
	w.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.r.ReadByte(); err != io.EOF {
		t.Fatalf("connection of a dropped guest: %v", err)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
