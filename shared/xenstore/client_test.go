package xenstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/guest-agent/guest-agent/shared/xenstore/xenstoretest"
)

func dial(t *testing.T, s *xenstoretest.Server) *xenstore.Client {
	t.Helper()
	c, err := xenstore.Dial(context.Background(), s.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// nextEvent waits for one event or fails.
func nextEvent(t *testing.T, w *xenstore.Watch) xenstore.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watch channel closed: %v", w.Err())
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event within 5s")
	}
	return xenstore.Event{}
}

// noEvent asserts that nothing arrives for a short while.
func noEvent(t *testing.T, w *xenstore.Watch) {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		t.Fatalf("unexpected event %+v (open %v)", ev, ok)
	case <-time.After(50 * time.Millisecond):
	}
}

// eventually polls cond for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReadWrite(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	if err := c.Write(ctx, "/local/domain/3/data/host/req", []byte(`{"name":"version"}`)); err != nil {
		t.Fatal(err)
	}
	got, err := c.Read(ctx, "/local/domain/3/data/host/req")
	if err != nil || string(got) != `{"name":"version"}` {
		t.Fatalf("Read = %q, %v", got, err)
	}
	// Parents were created with empty values.
	if v, ok := s.Read("/local/domain/3/data"); !ok || len(v) != 0 {
		t.Fatalf("parent = %q, %v", v, ok)
	}

	// Values are octet strings: NULs and an empty value survive.
	bin := []byte{0, 1, 0, 255}
	if err := c.Write(ctx, "/bin", bin); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Read(ctx, "/bin"); err != nil || !bytes.Equal(got, bin) {
		t.Fatalf("binary Read = %v, %v", got, err)
	}
	if err := c.Write(ctx, "/empty", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Read(ctx, "/empty"); err != nil || len(got) != 0 {
		t.Fatalf("empty Read = %q, %v", got, err)
	}

	_, err = c.Read(ctx, "/missing")
	var xe *xenstore.Error
	if !errors.Is(err, xenstore.ErrNotFound) || !errors.As(err, &xe) || xe.Code != "ENOENT" || xe.Op != xenstore.OpRead || xe.Path != "/missing" {
		t.Fatalf("missing Read: %v", err)
	}
	if err := c.Write(ctx, "/bad//path", []byte("x")); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("bad path: %v", err)
	}
	if err := c.Write(ctx, "/nul\x00path", []byte("x")); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("path with NUL: %v", err)
	}
}

func TestMkdirRmDirectory(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	if err := c.Write(ctx, "/a/keep", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mkdir(ctx, "/a/b/c"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mkdir(ctx, "/a"); err != nil { // exists: value left alone
		t.Fatal(err)
	}
	names, err := c.Directory(ctx, "/a")
	if err != nil || !slices.Equal(names, []string{"b", "keep"}) {
		t.Fatalf("Directory = %q, %v", names, err)
	}
	if names, err := c.Directory(ctx, "/a/b/c"); err != nil || names != nil {
		t.Fatalf("empty Directory = %q, %v", names, err)
	}
	if _, err := c.Directory(ctx, "/nope"); !errors.Is(err, xenstore.ErrNotFound) {
		t.Fatalf("Directory of missing node: %v", err)
	}

	if err := c.Rm(ctx, "/a/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(ctx, "/a/b/c"); !errors.Is(err, xenstore.ErrNotFound) {
		t.Fatalf("subtree survived Rm: %v", err)
	}
	if err := c.Rm(ctx, "/a/gone"); err != nil {
		t.Fatalf("Rm of a missing node under an existing parent: %v", err)
	}
	if err := c.Rm(ctx, "/x/y"); !errors.Is(err, xenstore.ErrNotFound) {
		t.Fatalf("Rm with missing parent: %v", err)
	}
}

func TestDirectoryLargerThanOneReply(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	// 300 names of 36 bytes (nova uses UUIDs) need ~11 KiB: three pages.
	var want []string
	for i := range 300 {
		name := fmt.Sprintf("%08d-0000-4000-8000-000000000000", i)
		want = append(want, name)
		if err := s.Write("/big/"+name, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Directory(ctx, "/big")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("got %d names, want %d", len(got), len(want))
	}
	// And inside a transaction.
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		got, err := tx.Directory(ctx, "/big")
		if err != nil {
			return err
		}
		if len(got) != 300 {
			return fmt.Errorf("tx listing has %d names", len(got))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestGetDomainPath(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)
	p, err := c.GetDomainPath(ctx, "7")
	if err != nil || p != "/local/domain/7" {
		t.Fatalf("GetDomainPath = %q, %v", p, err)
	}
	if _, err := c.GetDomainPath(ctx, "seven"); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("bad domid: %v", err)
	}
}

func TestRelativePathsAsGuest(t *testing.T) {
	s := xenstoretest.NewServer(t, xenstoretest.WithDomID(5))
	c := dial(t, s)
	ctx := ctxT(t)

	w, err := c.Watch(ctx, "data/host", "")
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev.Path != "data/host" {
		t.Fatalf("initial event %+v", ev)
	}
	if err := c.Write(ctx, "data/host/abc", []byte("req")); err != nil {
		t.Fatal(err)
	}
	if v, ok := s.Read("/local/domain/5/data/host/abc"); !ok || string(v) != "req" {
		t.Fatalf("relative write landed elsewhere: %q %v", v, ok)
	}
	// Relative watches report relative paths.
	if ev := nextEvent(t, w); ev.Path != "data/host/abc" {
		t.Fatalf("event %+v", ev)
	}
}

func TestWatchSemantics(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	w, err := c.Watch(ctx, "/w", "tok")
	if err != nil {
		t.Fatal(err)
	}
	if w.Token() != "tok" || w.Path() != "/w" {
		t.Fatalf("watch %q %q", w.Path(), w.Token())
	}
	// Fires at once on registration, even though /w does not exist.
	if ev := nextEvent(t, w); ev != (xenstore.Event{Path: "/w", Token: "tok"}) {
		t.Fatalf("initial event %+v", ev)
	}
	if err := s.Write("/w/a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev.Path != "/w/a" {
		t.Fatalf("child write: %+v", ev)
	}
	// Writes elsewhere, including to a path that merely shares the prefix,
	// do not fire.
	if err := c.Write(ctx, "/wx", []byte("1")); err != nil {
		t.Fatal(err)
	}
	noEvent(t, w)

	deep, err := c.Watch(ctx, "/w/deep/x", "")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, deep)
	// Removing a parent fires the deeper watch with its own path.
	if err := c.Rm(ctx, "/w"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev.Path != "/w" {
		t.Fatalf("rm event on /w watch: %+v", ev)
	}
	if ev := nextEvent(t, deep); ev.Path != "/w/deep/x" {
		t.Fatalf("rm event on deep watch: %+v", ev)
	}

	if _, err := c.Watch(ctx, "/other", "tok"); !errors.Is(err, xenstore.ErrExist) {
		t.Fatalf("token reuse: %v", err)
	}
}

func TestUnwatch(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	w, err := c.Watch(ctx, "/u", "")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, w)
	if n := s.Watches(); n != 1 {
		t.Fatalf("server has %d watches", n)
	}
	if err := w.Unwatch(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-w.Events(); ok {
		t.Fatal("channel still open after Unwatch")
	}
	if w.Err() != nil {
		t.Fatalf("Err after Unwatch: %v", w.Err())
	}
	if n := s.Watches(); n != 0 {
		t.Fatalf("server still has %d watches", n)
	}
	if err := w.Unwatch(ctx); err != nil {
		t.Fatalf("second Unwatch: %v", err)
	}
	// The token is free again and events after Unwatch go nowhere.
	if err := c.Write(ctx, "/u/x", nil); err != nil {
		t.Fatal(err)
	}
	w2, err := c.Watch(ctx, "/u", w.Token())
	if err != nil {
		t.Fatalf("token not released: %v", err)
	}
	nextEvent(t, w2)
}

// The reader must route events and replies that arrive interleaved: the
// server queues each write's event before its reply, and many calls are in
// flight at once.
func TestEventsInterleavedWithReplies(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	w, err := c.Watch(ctx, "/i", "")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, w)

	const workers, each = 8, 40
	seen := make(map[string]bool)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for ev := range w.Events() {
			seen[ev.Path] = true
			if len(seen) == workers*each {
				return
			}
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range each {
				p := fmt.Sprintf("/i/%d/%d", g, n)
				val := []byte(p + "=v")
				if err := c.Write(ctx, p, val); err != nil {
					errs <- err
					return
				}
				got, err := c.Read(ctx, p)
				if err != nil || !bytes.Equal(got, val) {
					errs <- fmt.Errorf("read %s = %q, %v", p, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	select {
	case <-collected:
	case <-time.After(5 * time.Second):
		t.Fatalf("got %d of %d distinct events", len(seen), workers*each)
	}
}

// A reply must not wait for the watch consumer: with nobody receiving,
// calls still complete and events for a path already queued are merged.
func TestSlowWatchConsumer(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	w, err := c.Watch(ctx, "/c", "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := c.Write(ctx, "/c/a", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Write(ctx, "/c/b", nil); err != nil {
		t.Fatal(err)
	}
	// Events precede replies, so by now all of them were dispatched.
	var got []string
	for range 3 {
		got = append(got, nextEvent(t, w).Path)
	}
	if !slices.Equal(got, []string{"/c", "/c/a", "/c/b"}) {
		t.Fatalf("events %q", got)
	}
	noEvent(t, w)
	// After receiving, a new change is delivered again.
	if err := c.Write(ctx, "/c/a", nil); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev.Path != "/c/a" {
		t.Fatalf("event %+v", ev)
	}
}

func TestTransactionCommit(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	other := dial(t, s)
	ctx := ctxT(t)

	w, err := other.Watch(ctx, "/t", "")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, w)

	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, "/t/a", []byte("1")); err != nil {
			return err
		}
		if err := tx.Mkdir(ctx, "/t/dir"); err != nil {
			return err
		}
		// Visible inside, invisible outside until commit.
		if v, err := tx.Read(ctx, "/t/a"); err != nil || string(v) != "1" {
			return fmt.Errorf("tx read = %q, %v", v, err)
		}
		if _, err := other.Read(ctx, "/t/a"); !errors.Is(err, xenstore.ErrNotFound) {
			return fmt.Errorf("uncommitted write visible outside: %v", err)
		}
		if names, err := tx.Directory(ctx, "/t"); err != nil || !slices.Equal(names, []string{"a", "dir"}) {
			return fmt.Errorf("tx directory = %q, %v", names, err)
		}
		select {
		case ev := <-w.Events():
			return fmt.Errorf("watch fired before commit: %+v", ev)
		default:
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := other.Read(ctx, "/t/a"); err != nil || string(v) != "1" {
		t.Fatalf("after commit: %q, %v", v, err)
	}
	got := []string{nextEvent(t, w).Path, nextEvent(t, w).Path}
	slices.Sort(got)
	if !slices.Equal(got, []string{"/t/a", "/t/dir"}) {
		t.Fatalf("commit events %q", got)
	}
	if n := s.OpenTransactions(); n != 0 {
		t.Fatalf("%d transactions left open", n)
	}
}

func TestTransactionRetriesOnConflict(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	other := dial(t, s)
	ctx := ctxT(t)

	if err := c.Write(ctx, "/counter", []byte("0")); err != nil {
		t.Fatal(err)
	}
	attempts := 0
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		attempts++
		v, err := tx.Read(ctx, "/counter")
		if err != nil {
			return err
		}
		if attempts == 1 {
			// Another writer commits in between: our commit must fail.
			if err := other.Write(ctx, "/counter", []byte("10")); err != nil {
				return err
			}
		}
		return tx.Write(ctx, "/counter", append(v, '+'))
	})
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 2 {
		t.Fatalf("%d attempts, want 2", attempts)
	}
	if v, _ := s.Read("/counter"); string(v) != "10+" {
		t.Fatalf("counter = %q: the retry did not see the other write", v)
	}
	if n := s.OpenTransactions(); n != 0 {
		t.Fatalf("%d transactions left open", n)
	}
}

func TestTransactionGivesUp(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)
	s.SetHook(func(req xenstore.Message) xenstoretest.Action {
		if req.Type == xenstore.OpTransactionEnd && bytes.HasPrefix(req.Payload, []byte("T")) {
			return xenstoretest.Action{Error: "EAGAIN"}
		}
		return xenstoretest.Action{}
	})
	attempts := 0
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		attempts++
		return tx.Write(ctx, "/x", nil)
	})
	if !errors.Is(err, xenstore.ErrAgain) {
		t.Fatalf("got %v, want ErrAgain", err)
	}
	if attempts != xenstore.MaxTransactionAttempts {
		t.Fatalf("%d attempts, want %d", attempts, xenstore.MaxTransactionAttempts)
	}
}

func TestTransactionFnError(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	boom := errors.New("boom")
	var kept *xenstore.Tx
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		kept = tx
		if err := tx.Write(ctx, "/aborted", []byte("x")); err != nil {
			return err
		}
		return boom
	})
	if err != boom {
		t.Fatalf("got %v, want the function's error as is", err)
	}
	if _, ok := s.Read("/aborted"); ok {
		t.Fatal("aborted transaction was committed")
	}
	if n := s.OpenTransactions(); n != 0 {
		t.Fatalf("%d transactions left open", n)
	}
	if err := kept.Write(ctx, "/late", nil); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("use after end: %v", err)
	}
}

// A TRANSACTION_START abandoned by its context must not leave a transaction
// open in xenstored once the reply finally comes.
func TestTransactionStartCancelled(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	release := make(chan struct{})
	var aborted atomic.Bool
	s.SetHook(func(req xenstore.Message) xenstoretest.Action {
		switch {
		case req.Type == xenstore.OpTransactionStart:
			<-release
		case req.Type == xenstore.OpTransactionEnd && string(req.Payload) == "F\x00":
			aborted.Store(true)
		}
		return xenstoretest.Action{}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	called := false
	err := c.Transaction(ctx, func(*xenstore.Tx) error { called = true; return nil })
	if !errors.Is(err, context.DeadlineExceeded) || called {
		t.Fatalf("got %v (fn called %v), want DeadlineExceeded", err, called)
	}
	close(release)
	eventually(t, "the late transaction to be aborted", func() bool {
		return aborted.Load() && s.OpenTransactions() == 0
	})
}

func TestContextCancelLeavesClientUsable(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	s.SetHook(func(req xenstore.Message) xenstoretest.Action {
		if req.Type == xenstore.OpRead && string(req.Payload) == "/hang\x00" {
			return xenstoretest.Action{NoReply: true}
		}
		return xenstoretest.Action{}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := c.Read(ctx, "/hang"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if err := c.Write(ctxT(t), "/ok", []byte("y")); err != nil {
		t.Fatalf("client broken after a cancelled call: %v", err)
	}
}

func TestErrorReplies(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)
	s.SetHook(func(req xenstore.Message) xenstoretest.Action {
		switch req.Type {
		case xenstore.OpWrite:
			return xenstoretest.Action{Error: "EACCES"}
		case xenstore.OpMkdir:
			return xenstoretest.Action{Error: "EWEIRD"}
		}
		return xenstoretest.Action{}
	})
	err := c.Write(ctx, "/ro", []byte("x"))
	var xe *xenstore.Error
	if !errors.Is(err, xenstore.ErrPermission) || !errors.As(err, &xe) || xe.Code != "EACCES" || xe.Op != xenstore.OpWrite || xe.Path != "/ro" {
		t.Fatalf("EACCES: %v", err)
	}
	err = c.Mkdir(ctx, "/m")
	if !errors.As(err, &xe) || xe.Code != "EWEIRD" || errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("unknown code: %v", err)
	}
}

func TestPayloadLimit(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	// "/p" NUL value: 3 bytes of path leave exactly 4093 for the value.
	fits := bytes.Repeat([]byte("v"), xenstore.PayloadMax-3)
	if err := c.Write(ctx, "/p", fits); err != nil {
		t.Fatalf("largest write: %v", err)
	}
	if got, err := c.Read(ctx, "/p"); err != nil || !bytes.Equal(got, fits) {
		t.Fatalf("largest read: %d bytes, %v", len(got), err)
	}
	err := c.Write(ctx, "/p", append(fits, 'x'))
	if !errors.Is(err, xenstore.ErrPayloadTooLarge) {
		t.Fatalf("oversized write: %v", err)
	}
	if _, err := c.Read(ctx, "/"+strings.Repeat("a", xenstore.PayloadMax)); !errors.Is(err, xenstore.ErrPayloadTooLarge) {
		t.Fatalf("oversized path: %v", err)
	}
	// Refused locally: the connection survives (xenstored would kill it).
	if err := c.Write(ctx, "/after", []byte("ok")); err != nil {
		t.Fatalf("connection lost after a refused request: %v", err)
	}
	if n := s.Connections(); n != 1 {
		t.Fatalf("%d connections", n)
	}
}

// The test server, like xenstored, kills a connection that sends an
// oversized payload.
func TestServerKillsOversizedRequest(t *testing.T) {
	s := xenstoretest.NewServer(t)
	nc, err := net.Dial("unix", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hdr := []byte{2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x10, 0, 0} // READ, len 4097
	if _, err := nc.Write(hdr); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes, want the connection closed", n)
	}
}

func TestIncomingOversizedMessageBreaksConnection(t *testing.T) {
	cli, srv := net.Pipe()
	defer srv.Close()
	c := xenstore.NewClient(cli)
	defer c.Close()

	done := make(chan error, 1)
	go func() {
		_, err := c.Read(context.Background(), "/x")
		done <- err
	}()
	if _, err := xenstore.ReadMessage(srv); err != nil { // the request
		t.Fatal(err)
	}
	hdr := []byte{2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10} // len 256 MiB
	if _, err := srv.Write(hdr); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if !errors.Is(err, xenstore.ErrDisconnected) || !errors.Is(err, xenstore.ErrPayloadTooLarge) {
		t.Fatalf("got %v", err)
	}
}

// oxenstored sends directory listings longer than PayloadMax on its socket;
// the client must take them rather than drop the connection.
func TestLongDirectoryReplyAccepted(t *testing.T) {
	cli, srv := net.Pipe()
	defer srv.Close()
	c := xenstore.NewClient(cli)
	defer c.Close()
	var want []string
	for i := range 200 {
		want = append(want, fmt.Sprintf("%08d-0000-4000-8000-000000000000", i))
	}
	go func() {
		req, err := xenstore.ReadMessage(srv)
		if err != nil {
			return
		}
		_ = writeRaw(srv, xenstore.OpDirectory, req.ReqID, xenstore.JoinStrings(want...))
	}()
	got, err := c.Directory(ctxT(t), "/big")
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %d names, %v", len(got), err)
	}
}

// writeRaw writes a message without WriteMessage's size check, as a server
// that ignores the limit would.
func writeRaw(w io.Writer, op xenstore.Op, reqID uint32, payload []byte) error {
	b := make([]byte, xenstore.HeaderSize, xenstore.HeaderSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], uint32(op))
	binary.LittleEndian.PutUint32(b[4:], reqID)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(payload)))
	_, err := w.Write(append(b, payload...))
	return err
}

func TestUnexpectedReplyType(t *testing.T) {
	cli, srv := net.Pipe()
	defer srv.Close()
	c := xenstore.NewClient(cli)
	defer c.Close()
	go func() {
		req, err := xenstore.ReadMessage(srv)
		if err != nil {
			return
		}
		_ = xenstore.WriteMessage(srv, xenstore.Message{Type: xenstore.OpDirectory, ReqID: req.ReqID, Payload: []byte("a\x00")})
	}()
	if _, err := c.Read(ctxT(t), "/x"); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
}

func TestConnectionDropFailsPendingCalls(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)
	if err := c.Write(ctx, "/kept", []byte("v")); err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, "/kept", "")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, w)

	seen := make(chan struct{}, 4)
	s.SetHook(func(req xenstore.Message) xenstoretest.Action {
		if req.Type == xenstore.OpRead && string(req.Payload) == "/hang\x00" {
			seen <- struct{}{}
			return xenstoretest.Action{NoReply: true}
		}
		return xenstoretest.Action{}
	})
	const pending = 3
	results := make(chan error, pending)
	for range pending {
		go func() {
			_, err := c.Read(ctx, "/hang")
			results <- err
		}()
	}
	for range pending {
		<-seen
	}
	s.DropConnections()

	for range pending {
		if err := <-results; !errors.Is(err, xenstore.ErrDisconnected) {
			t.Fatalf("pending call got %v, want ErrDisconnected", err)
		}
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if !errors.Is(c.Err(), xenstore.ErrDisconnected) {
		t.Fatalf("Err = %v", c.Err())
	}
	if _, ok := <-w.Events(); ok {
		t.Fatal("watch channel open after disconnect")
	}
	if !errors.Is(w.Err(), xenstore.ErrDisconnected) {
		t.Fatalf("watch Err = %v", w.Err())
	}
	if _, err := c.Read(ctx, "/kept"); !errors.Is(err, xenstore.ErrDisconnected) {
		t.Fatalf("call after disconnect: %v", err)
	}
	if _, err := c.Watch(ctx, "/kept", ""); !errors.Is(err, xenstore.ErrDisconnected) {
		t.Fatalf("watch after disconnect: %v", err)
	}
	if err := w.Unwatch(ctx); err != nil {
		t.Fatalf("Unwatch of a dead watch: %v", err)
	}

	// Reconnecting works and sees the same store.
	s.SetHook(nil)
	c2 := dial(t, s)
	if v, err := c2.Read(ctx, "/kept"); err != nil || string(v) != "v" {
		t.Fatalf("after reconnect: %q, %v", v, err)
	}
}

func TestServerRestart(t *testing.T) {
	s := xenstoretest.NewServer(t)
	c := dial(t, s)
	ctx := ctxT(t)
	if err := c.Write(ctx, "/r", []byte("1")); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if _, err := c.Read(ctx, "/r"); !errors.Is(err, xenstore.ErrDisconnected) {
		t.Fatalf("call while stopped: %v", err)
	}
	if _, err := xenstore.Dial(ctx, s.Path()); err == nil {
		t.Fatal("dial succeeded while the server is stopped")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c2 := dial(t, s)
	if v, err := c2.Read(ctx, "/r"); err != nil || string(v) != "1" {
		t.Fatalf("after restart: %q, %v", v, err)
	}
}

func TestCloseFailsPendingAndLeaksNothing(t *testing.T) {
	s := xenstoretest.NewServer(t)
	before := runtime.NumGoroutine()

	c, err := xenstore.Dial(context.Background(), s.Path())
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	w, err := c.Watch(ctx, "/z", "")
	if err != nil {
		t.Fatal(err)
	}
	var started atomic.Bool
	s.SetHook(func(req xenstore.Message) xenstoretest.Action {
		if req.Type == xenstore.OpRead {
			started.Store(true)
			return xenstoretest.Action{NoReply: true}
		}
		return xenstoretest.Action{}
	})
	res := make(chan error, 1)
	go func() {
		_, err := c.Read(ctx, "/z")
		res <- err
	}()
	eventually(t, "the read to reach the server", started.Load)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-res; !errors.Is(err, xenstore.ErrClosed) {
		t.Fatalf("pending call got %v, want ErrClosed", err)
	}
	for range w.Events() {
	}
	if !errors.Is(w.Err(), xenstore.ErrClosed) {
		t.Fatalf("watch Err = %v", w.Err())
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Client goroutines (reader, watch pump) and the server's per-connection
	// ones all end.
	eventually(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
}

func TestDial(t *testing.T) {
	ctx := ctxT(t)
	if _, err := xenstore.Dial(ctx, "/nonexistent/xenstored/socket"); err == nil {
		t.Fatal("Dial of a missing path succeeded")
	}
	if _, err := os.Stat(xenstore.DevicePath); err == nil {
		t.Skip("a real xenbus device exists here; DialDefault would use it")
	}
	if _, err := os.Stat(xenstore.ProcPath); err == nil {
		t.Skip("a real /proc/xen/xenbus exists here; DialDefault would use it")
	}
	s := xenstoretest.NewServer(t)
	if err := s.Write("/hello", []byte("world")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XENSTORED_PATH", s.Path())
	if p := xenstore.DefaultPaths(); p[len(p)-1] != s.Path() {
		t.Fatalf("DefaultPaths = %q", p)
	}
	c, err := xenstore.DialDefault(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v, err := c.Read(ctx, "/hello"); err != nil || string(v) != "world" {
		t.Fatalf("Read = %q, %v", v, err)
	}

	t.Setenv("XENSTORED_PATH", "/nonexistent/socket")
	if _, err := xenstore.DialDefault(ctx); err == nil || !strings.Contains(err.Error(), "no usable transport") {
		t.Fatalf("DialDefault without any transport: %v", err)
	}
}
