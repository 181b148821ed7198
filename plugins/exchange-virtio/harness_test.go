package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
)

// parserSide plays the parser: a real inbox from the session package, an
// outbox dialled to it for the exchange, and the feed of received events.
type parserSide struct {
	t      *testing.T
	out    *session.Outbox
	events chan received
}

type received struct {
	ev session.Event
	f  *os.File
}

func newParserSide(t *testing.T) *parserSide {
	t.Helper()
	inboxPath := filepath.Join(t.TempDir(), "inbox")
	in, err := session.ListenInbox(inboxPath)
	if err != nil {
		t.Fatal(err)
	}
	out, err := session.DialOutbox(inboxPath)
	if err != nil {
		t.Fatal(err)
	}
	feed, err := in.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := &parserSide{t: t, out: out, events: make(chan received, 64)}
	go func() {
		defer close(p.events)
		for {
			ev, f, err := feed.Next()
			if err != nil {
				return
			}
			p.events <- received{ev, f}
		}
	}()
	t.Cleanup(func() {
		out.Close()
		feed.Close()
		in.Close()
		for r := range p.events {
			if r.f != nil {
				r.f.Close()
			}
		}
	})
	return p
}

// next returns the next event, failing the test after d.
func (p *parserSide) next(d time.Duration) received {
	p.t.Helper()
	select {
	case r, ok := <-p.events:
		if !ok {
			p.t.Fatal("inbox feed closed")
		}
		return r
	case <-time.After(d):
		p.t.Fatalf("no event within %v", d)
	}
	return received{}
}

// nextOf skips events of other types (re-announcements) until one of typ.
func (p *parserSide) nextOf(typ string, d time.Duration) received {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		r := p.next(time.Until(deadline))
		if r.ev.Type == typ {
			return r
		}
		p.t.Logf("skipping %s event", r.ev.Type)
		if r.f != nil {
			r.f.Close()
		}
	}
}

// none checks that nothing but the allowed event types arrive within d.
func (p *parserSide) none(d time.Duration, allowed ...string) {
	p.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case r := <-p.events:
			ok := false
			for _, a := range allowed {
				ok = ok || r.ev.Type == a
			}
			if !ok {
				p.t.Fatalf("unexpected event %+v", r.ev)
			}
		case <-deadline:
			return
		}
	}
}

// testLogger logs through t until the test ends.
func testLogger(t *testing.T) hclog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return hclog.New(&hclog.LoggerOptions{Name: "exchange-virtio", Level: hclog.Trace, Output: w})
}

type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func channel(t *testing.T, method, path string, opts map[string]any) sdk.Channel {
	t.Helper()
	// These tests exercise the accept loop and the host watch kept here;
	// the hand-overs have their own tests.
	keep := map[string]string{methodUnix: "hand_over_listener", methodVirtio: "hand_over_port"}
	if opt, ok := keep[method]; ok {
		if opts == nil {
			opts = map[string]any{}
		}
		if _, set := opts[opt]; !set {
			opts[opt] = false
		}
	}
	var raw json.RawMessage
	if opts != nil {
		b, err := json.Marshal(opts)
		if err != nil {
			t.Fatal(err)
		}
		raw = b
	}
	return sdk.Channel{Name: "ch", Method: method, Path: path, Options: raw, Logger: testLogger(t)}
}

// open opens ch on e and returns the cancel that closes it and waits until
// the exchange has released everything.
func open(t *testing.T, e *Exchange, p *parserSide, ch sdk.Channel) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resolved, err := e.Open(ctx, ch, p.out)
	if err != nil {
		cancel()
		t.Fatalf("Open %s %s: %v", ch.Method, ch.Path, err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			waitIdle(t, e)
		})
	}
	t.Cleanup(stop)
	return resolved, stop
}

// waitIdle waits until every channel of e has released its resources.
func waitIdle(t *testing.T, e *Exchange) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.mu.Lock()
		n := len(e.inUse)
		e.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d channel(s) still hold their resources", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readFull reads exactly n bytes from f with a deadline.
func readFull(t *testing.T, f *os.File, n int) []byte {
	t.Helper()
	if err := f.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatalf("the handed descriptor is not pollable (blocking?): %v", err)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(f, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	return buf
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

func exec(name string, args ...string) error { return osexec.Command(name, args...).Run() }
