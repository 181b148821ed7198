package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/guest-agent/guest-agent/shared/xenstore/xenstoretest"
	"github.com/hashicorp/go-hclog"
)

const (
	domid = 7
	home  = "/local/domain/7"
	hostD = home + "/data/host"
	gstD  = home + "/data/guest"
)

// fakeParser plays parser-json's message-session loop: each request gets
// {"returncode":"0","message":<request>} unless hold is set, in which case
// replies wait until release is closed.
type fakeParser struct {
	t       *testing.T
	mc      *session.MessageConn
	mu      sync.Mutex
	seen    map[string]int // request value → times dispatched
	hold    chan struct{}  // nil: answer at once
	delayed []func()
	done    chan struct{}
}

func (p *fakeParser) count(v string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[v]
}

func (p *fakeParser) total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.seen {
		n += c
	}
	return n
}

// release answers every held request.
func (p *fakeParser) release() {
	p.mu.Lock()
	fns := p.delayed
	p.delayed = nil
	p.hold = nil
	p.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

func (p *fakeParser) serve() {
	defer close(p.done)
	for {
		id, payload, err := p.mc.Read()
		if err != nil {
			return
		}
		req := string(payload)
		reply, _ := json.Marshal(map[string]string{"returncode": "0", "message": req})
		if strings.HasPrefix(req, "big:") {
			reply = bytes.Repeat([]byte("x"), 5000)
		}
		send := func() {
			if err := p.mc.Write(id, reply); err != nil {
				p.t.Logf("fake parser: %v", err)
			}
		}
		p.mu.Lock()
		p.seen[req]++
		if p.hold != nil {
			p.delayed = append(p.delayed, send)
			p.mu.Unlock()
			continue
		}
		p.mu.Unlock()
		send()
	}
}

type fixture struct {
	t      *testing.T
	srv    *xenstoretest.Server
	ex     *Exchange
	parser *fakeParser
	cancel context.CancelFunc
	ctx    context.Context
}

// open starts the exchange on the server for channel "nova".
func open(t *testing.T, srv *xenstoretest.Server, ex *Exchange, opts string, hold bool) *fixture {
	t.Helper()
	dir, err := os.MkdirTemp("", "xsx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	inbox, err := session.ListenInbox(filepath.Join(dir, "inbox"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inbox.Close() })
	out, err := session.DialOutbox(filepath.Join(dir, "inbox"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	feed, err := inbox.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { feed.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	ch := sdk.Channel{Name: "nova", Method: methodXenstore, Path: srv.Path(), Logger: hclog.New(&hclog.LoggerOptions{
		Name: "xs", Level: hclog.Debug, Output: testWriter{t},
	})}
	if opts != "" {
		ch.Options = json.RawMessage(opts)
	}
	resolved, err := ex.Open(ctx, ch, out)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resolved != srv.Path() {
		t.Errorf("resolved %q, want %q", resolved, srv.Path())
	}
	ev, f, err := feed.Next()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if ev.Type != session.EventHandoff || ev.Kind != session.KindMessages || ev.Channel != "nova" || ev.Origin != "xenstore:"+srv.Path() {
		t.Errorf("handoff event %+v", ev)
	}
	mc, err := session.NewMessageConn(f)
	f.Close()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	p := &fakeParser{t: t, mc: mc, seen: map[string]int{}, done: make(chan struct{})}
	if hold {
		p.hold = make(chan struct{})
	}
	go p.serve()
	fx := &fixture{t: t, srv: srv, ex: ex, parser: p, cancel: cancel, ctx: ctx}
	t.Cleanup(func() {
		cancel()
		<-p.done // the exchange closes the session when it stops
		mc.Close()
	})
	return fx
}

// testWriter sends log lines to t.Log while the test runs.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a late line after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newExchange() *Exchange {
	return &Exchange{MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
}

func reqValue(i int) string { return fmt.Sprintf(`{"name":"version","value":"r%d"}`, i) }

func reqID(i int) string { return fmt.Sprintf("6f1b0f9e-0000-4000-8000-%012d", i) }

// waitAnswer waits for data/guest/<id> and checks it answers value.
func waitAnswer(t *testing.T, srv *xenstoretest.Server, id, value string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v, ok := srv.Read(gstD + "/" + id); ok {
			var r struct{ Returncode, Message string }
			if err := json.Unmarshal(v, &r); err != nil || r.Message != value || r.Returncode != "0" {
				t.Fatalf("answer %s = %q (%v), want message %q", id, v, err, value)
			}
			if _, still := srv.Read(hostD + "/" + id); still {
				t.Fatalf("request %s still present after its answer", id)
			}
			return
		}
		if time.Now().After(deadline) {
			names, _ := srv.Directory(hostD)
			t.Fatalf("no answer for %s within 5s; pending requests %v", id, names)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestServesRequestsWaitingAtStart(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	for i := range 5 {
		if err := srv.Write(hostD+"/"+reqID(i), []byte(reqValue(i))); err != nil {
			t.Fatal(err)
		}
	}
	fx := open(t, srv, newExchange(), "", false)
	for i := range 5 {
		waitAnswer(t, srv, reqID(i), reqValue(i))
	}
	if n := fx.parser.total(); n != 5 {
		t.Fatalf("%d dispatches, want 5", n)
	}
}

func TestCreatesRequestDirAndWatches(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	var reqs atomic.Int64
	srv.SetHook(func(m xenstore.Message) xenstoretest.Action {
		reqs.Add(1)
		return xenstoretest.Action{}
	})
	fx := open(t, srv, newExchange(), "", false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := srv.Read(hostD); ok && srv.Watches() == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("data/host not created or no watch")
		}
		time.Sleep(2 * time.Millisecond)
	}
	for i := range 3 {
		if err := srv.Write(hostD+"/"+reqID(i), []byte(reqValue(i))); err != nil {
			t.Fatal(err)
		}
		waitAnswer(t, srv, reqID(i), reqValue(i))
	}
	// Idle: no polling, not a single request to xenstored.
	time.Sleep(50 * time.Millisecond)
	before := reqs.Load()
	time.Sleep(300 * time.Millisecond)
	if after := reqs.Load(); after != before {
		t.Fatalf("%d xenstore requests while idle: the exchange polls", after-before)
	}
	if n := fx.parser.total(); n != 3 {
		t.Fatalf("%d dispatches, want 3", n)
	}
}

func TestRecreatesRemovedRequestDir(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	open(t, srv, newExchange(), "", false)
	waitFor(t, func() bool { _, ok := srv.Read(hostD); return ok })
	if err := srv.Rm(home + "/data"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := srv.Read(hostD); return ok })
	if err := srv.Write(hostD+"/"+reqID(1), []byte(reqValue(1))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(1), reqValue(1))
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestEmptyValueWaitsForWrite(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	fx := open(t, srv, newExchange(), "", false)
	waitFor(t, func() bool { return srv.Watches() == 1 })
	if err := srv.Write(hostD+"/"+reqID(1), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := fx.parser.total(); n != 0 {
		t.Fatalf("empty request dispatched %d times", n)
	}
	if err := srv.Write(hostD+"/"+reqID(1), []byte(reqValue(1))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(1), reqValue(1))
	if n := fx.parser.total(); n != 1 {
		t.Fatalf("%d dispatches, want 1", n)
	}
}

// 100 requests written back to back (as xenstore-write does with 100 keys)
// are each dispatched and answered once. The host's writes race with the
// exchange's transactions, which then conflict and are retried.
func TestHundredAtOnce(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	fx := open(t, srv, newExchange(), "", false)
	waitFor(t, func() bool { return srv.Watches() == 1 })
	for i := range 100 {
		if err := srv.Write(hostD+"/"+reqID(i), []byte(reqValue(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		waitAnswer(t, srv, reqID(i), reqValue(i))
	}
	time.Sleep(50 * time.Millisecond)
	for i := range 100 {
		if n := fx.parser.count(reqValue(i)); n != 1 {
			t.Errorf("request %d dispatched %d times", i, n)
		}
	}
	if names, _ := srv.Directory(hostD); len(names) != 0 {
		t.Fatalf("requests left: %v", names)
	}
}

// guestWrites counts WRITE requests to data/guest/* per path, and
// transaction ends, at the protocol level.
type guestWrites struct {
	mu     sync.Mutex
	writes map[string]int
	ends   int
}

func (g *guestWrites) hook(m xenstore.Message) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch m.Type {
	case xenstore.OpWrite:
		p, _, _ := strings.Cut(string(m.Payload), "\x00")
		if strings.Contains(p, "data/guest/") {
			g.writes[p]++
		}
	case xenstore.OpTransactionEnd:
		g.ends++
	}
}

// 100 requests written in one transaction of the host: nothing else
// writes while the exchange commits, so no transaction conflicts and every
// WRITE sent is a committed one: each answer is written exactly once.
func TestHundredInOneTransaction(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	g := &guestWrites{writes: map[string]int{}}
	srv.SetHook(func(m xenstore.Message) xenstoretest.Action { g.hook(m); return xenstoretest.Action{} })
	fx := open(t, srv, newExchange(), "", false)
	waitFor(t, func() bool { return srv.Watches() == 1 })
	host, err := xenstore.Dial(fx.ctx, srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	err = host.Transaction(fx.ctx, func(tx *xenstore.Tx) error {
		for i := range 100 {
			if err := tx.Write(fx.ctx, hostD+"/"+reqID(i), []byte(reqValue(i))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		waitAnswer(t, srv, reqID(i), reqValue(i))
	}
	time.Sleep(50 * time.Millisecond)
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := range 100 {
		if n := fx.parser.count(reqValue(i)); n != 1 {
			t.Errorf("request %d dispatched %d times", i, n)
		}
		if n := g.writes["data/guest/"+reqID(i)]; n != 1 {
			t.Errorf("answer %d written %d times", i, n)
		}
	}
	// Batched: far fewer transactions than answers (plus the host's one).
	if g.ends > 60 {
		t.Errorf("%d transactions for 100 answers: not batched", g.ends)
	}
}

// Commits that keep failing with EAGAIN fall back to nova-agent's order
// (remove, then write): still one answer each.
func TestConflictsFallBack(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	g := &guestWrites{writes: map[string]int{}}
	var failEnds atomic.Int64 // TRANSACTION_END T answered with EAGAIN while > 0
	srv.SetHook(func(m xenstore.Message) xenstoretest.Action {
		if m.Type == xenstore.OpTransactionEnd && bytes.HasPrefix(m.Payload, []byte("T")) && failEnds.Add(-1) >= 0 {
			return xenstoretest.Action{Error: "EAGAIN"}
		}
		if m.Type == xenstore.OpWrite && m.TxID == 0 {
			g.hook(m) // writes outside transactions are final
		}
		return xenstoretest.Action{}
	})
	fx := open(t, srv, newExchange(), "", false)
	waitFor(t, func() bool { return srv.Watches() == 1 })

	// A few conflicts: the transaction is retried and succeeds.
	failEnds.Store(3)
	if err := srv.Write(hostD+"/"+reqID(1), []byte(reqValue(1))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(1), reqValue(1))

	// Conflicts beyond the retry budget: answered without a transaction.
	failEnds.Store(1 << 30)
	if err := srv.Write(hostD+"/"+reqID(2), []byte(reqValue(2))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(2), reqValue(2))
	failEnds.Store(0)
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := g.writes["data/guest/"+reqID(2)]; n != 1 {
		t.Errorf("fallback wrote the answer %d times", n)
	}
	for i := 1; i <= 2; i++ {
		if n := fx.parser.count(reqValue(i)); n != 1 {
			t.Errorf("request %d dispatched %d times", i, n)
		}
	}
}

// The server restarts while requests are in flight and while others are
// written: every request is dispatched once and answered once.
func TestServerRestartMidStream(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	fx := open(t, srv, newExchange(), "", true)
	waitFor(t, func() bool { return srv.Watches() == 1 })
	for i := range 10 {
		if err := srv.Write(hostD+"/"+reqID(i), []byte(reqValue(i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return fx.parser.total() == 10 })

	srv.Stop()
	// Written while xenstored is down (the tree survives, as across a live
	// update).
	for i := 10; i < 20; i++ {
		if err := srv.Write(hostD+"/"+reqID(i), []byte(reqValue(i))); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(30 * time.Millisecond) // a few failed reconnects
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return fx.parser.total() == 20 })
	fx.parser.release()
	for i := range 20 {
		waitAnswer(t, srv, reqID(i), reqValue(i))
	}
	// And once more, with replies flowing.
	srv.DropConnections()
	for i := 20; i < 30; i++ {
		if err := srv.Write(hostD+"/"+reqID(i), []byte(reqValue(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 20; i < 30; i++ {
		waitAnswer(t, srv, reqID(i), reqValue(i))
	}
	time.Sleep(50 * time.Millisecond)
	for i := range 30 {
		if n := fx.parser.count(reqValue(i)); n != 1 {
			t.Errorf("request %d dispatched %d times", i, n)
		}
	}
}

// The connection breaks at TRANSACTION_END: first before xenstored applied
// it (the answer is written on the next connection), then after (nothing
// more is written).
func TestDisconnectAtCommit(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	var mode atomic.Int32 // 1: drop unapplied; 2: apply by hand, then drop
	var writesAfter atomic.Int64
	answer1, _ := json.Marshal(map[string]string{"returncode": "0", "message": reqValue(2)})
	srv.SetHook(func(m xenstore.Message) xenstoretest.Action {
		switch {
		case m.Type == xenstore.OpTransactionEnd && bytes.HasPrefix(m.Payload, []byte("T")):
			switch mode.Swap(0) {
			case 1:
				return xenstoretest.Action{Disconnect: true}
			case 2:
				_ = srv.Rm(hostD + "/" + reqID(2))
				_ = srv.Write(gstD+"/"+reqID(2), answer1)
				writesAfter.Store(0)
				return xenstoretest.Action{Disconnect: true}
			}
		case m.Type == xenstore.OpWrite && bytes.Contains(m.Payload, []byte("data/guest/"+reqID(2))):
			writesAfter.Add(1)
		}
		return xenstoretest.Action{}
	})
	fx := open(t, srv, newExchange(), "", false)
	waitFor(t, func() bool { return srv.Watches() == 1 })

	mode.Store(1)
	if err := srv.Write(hostD+"/"+reqID(1), []byte(reqValue(1))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(1), reqValue(1))

	mode.Store(2)
	if err := srv.Write(hostD+"/"+reqID(2), []byte(reqValue(2))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(2), reqValue(2))
	// Let the retry on the new connection happen: it must not write again.
	if err := srv.Write(hostD+"/"+reqID(3), []byte(reqValue(3))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(3), reqValue(3))
	if n := writesAfter.Load(); n != 0 {
		t.Fatalf("answer of request 2 written %d more times after its commit", n)
	}
	for i := 1; i <= 3; i++ {
		if n := fx.parser.count(reqValue(i)); n != 1 {
			t.Errorf("request %d dispatched %d times", i, n)
		}
	}
}

// A request the host withdraws before the answer gets none.
func TestWithdrawnRequestNotAnswered(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	fx := open(t, srv, newExchange(), "", true)
	waitFor(t, func() bool { return srv.Watches() == 1 })
	if err := srv.Write(hostD+"/"+reqID(1), []byte(reqValue(1))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return fx.parser.total() == 1 })
	if err := srv.Rm(hostD + "/" + reqID(1)); err != nil {
		t.Fatal(err)
	}
	fx.parser.release()
	if err := srv.Write(hostD+"/"+reqID(2), []byte(reqValue(2))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(2), reqValue(2))
	if v, ok := srv.Read(gstD + "/" + reqID(1)); ok {
		t.Fatalf("withdrawn request answered: %q", v)
	}
}

func TestOversizedAnswerBecomesError(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	open(t, srv, newExchange(), "", false)
	waitFor(t, func() bool { return srv.Watches() == 1 })
	if err := srv.Write(hostD+"/big", []byte("big:")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := srv.Read(gstD + "/big"); return ok })
	v, _ := srv.Read(gstD + "/big")
	var r struct{ Returncode, Message string }
	if err := json.Unmarshal(v, &r); err != nil || r.Returncode != "500" || !strings.Contains(r.Message, "does not fit") {
		t.Fatalf("answer %q", v)
	}
}

// Options: another domain's keys through GET_DOMAIN_PATH, custom paths.
func TestDomidAndPaths(t *testing.T) {
	srv := xenstoretest.NewServer(t) // dom0
	open(t, srv, newExchange(), `{"domid": 12, "request_path": "req", "response_path": "/abs/resp"}`, false)
	waitFor(t, func() bool { return srv.Watches() == 1 })
	if err := srv.Write("/local/domain/12/req/x1", []byte(reqValue(1))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := srv.Read("/abs/resp/x1"); return ok })
	if _, ok := srv.Read("/local/domain/12/req/x1"); ok {
		t.Fatal("request not removed")
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []string{`{"domid":"x"}`, `{"request_path":""}`, `{"request_path":"a","response_path":"a"}`, `{"domid":[1]}`} {
		ch := sdk.Channel{Name: "nova", Method: methodXenstore, Options: json.RawMessage(o), Logger: hclog.NewNullLogger()}
		if _, err := decodeOptions(ch); err == nil {
			t.Errorf("options %s accepted", o)
		}
	}
}

func TestOpenFailsWithoutXenstore(t *testing.T) {
	ex := newExchange()
	ch := sdk.Channel{Name: "nova", Method: methodXenstore, Path: "/nonexistent/xenstored/socket", Logger: hclog.NewNullLogger()}
	if _, err := ex.Open(context.Background(), ch, nil); err == nil {
		t.Fatal("Open succeeded without xenstored")
	}
	// The failed open released the channel: a second one does not wait.
	start := time.Now()
	_, _ = ex.Open(context.Background(), ch, nil)
	if time.Since(start) > time.Second {
		t.Fatal("second Open waited for a channel that never started")
	}
}

// With retry_path the channel opens before xenstored exists and serves once
// it appears.
func TestRetryPath(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	srv.Stop()
	if err := srv.Write(hostD+"/"+reqID(1), []byte(reqValue(1))); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(srv.Path())
	open(t, srv, newExchange(), `{"retry_path": true}`, false)
	time.Sleep(30 * time.Millisecond)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(1), reqValue(1))
}

// Stopping the channel closes the connection and the session.
func TestStopReleasesEverything(t *testing.T) {
	srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
	fx := open(t, srv, newExchange(), "", false)
	waitFor(t, func() bool { return srv.Connections() == 1 && srv.Watches() == 1 })
	fx.cancel()
	select {
	case <-fx.parser.done:
	case <-time.After(5 * time.Second):
		t.Fatal("message session still open after the channel stopped")
	}
	waitFor(t, func() bool { return srv.Connections() == 0 })
	// The channel can be opened again at once.
	fx2 := open(t, srv, fx.ex, "", false)
	if err := srv.Write(hostD+"/"+reqID(1), []byte(reqValue(1))); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, srv, reqID(1), reqValue(1))
	if fx2.parser.total() != 1 {
		t.Fatalf("dispatches %d", fx2.parser.total())
	}
}

func TestRequestName(t *testing.T) {
	for _, c := range []struct {
		dir, path, name string
		whole           bool
	}{
		{"data/host", "data/host", "", true},
		{"data/host", "data/host/abc", "abc", false},
		{"data/host", "data/host/abc/sub", "abc", false},
		{"data/host", "/local/domain/3/data/host/abc", "abc", false},
		{"data/host", "/local/domain/3/data/host", "", true},
		{"data/host", "data/hostile", "", false},
		{"/local/domain/3/data/host", "/local/domain/3/data/host/x", "x", false},
		// An absolute directory found inside a longer path: the index
		// was off by one (a panic when nothing followed, a name cut
		// short otherwise). Found by FuzzRequestName.
		{"/local/domain/3/data/host", "/a/local/domain/3/data/host/", "", false},
		{"/local/domain/3/data/host", "/a/local/domain/3/data/host/xyz", "xyz", false},
	} {
		name, whole := requestName(c.dir, c.path)
		if name != c.name || whole != c.whole {
			t.Errorf("requestName(%q, %q) = %q, %v", c.dir, c.path, name, whole)
		}
	}
}
