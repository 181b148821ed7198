package oxenstored_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/guest-agent/guest-agent/shared/xenstore/oxenstored"
)

func setup(t *testing.T) (*oxenstored.Daemon, *xenstore.Client, context.Context) {
	t.Helper()
	d := oxenstored.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	c, err := xenstore.Dial(ctx, d.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return d, c, ctx
}

func nextEvent(t *testing.T, w *xenstore.Watch) xenstore.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watch closed: %v", w.Err())
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event within 5s")
	}
	return xenstore.Event{}
}

func TestClientAndCLIInteroperate(t *testing.T) {
	d, c, ctx := setup(t)
	const req = "/local/domain/1/data/host/6f1b0f9e-1111-4d3c-8c2a-000000000001"
	const body = `{"name":"version","value":"agent"}`

	// CLI writes, client reads.
	if err := d.XenstoreWrite(ctx, req, body); err != nil {
		t.Fatal(err)
	}
	got, err := c.Read(ctx, req)
	if err != nil || string(got) != body {
		t.Fatalf("client read %q, %v", got, err)
	}
	names, err := c.Directory(ctx, "/local/domain/1/data/host")
	if err != nil || !slices.Equal(names, []string{"6f1b0f9e-1111-4d3c-8c2a-000000000001"}) {
		t.Fatalf("Directory = %q, %v", names, err)
	}

	// Client writes, CLI reads; the value goes through byte for byte.
	const resp = "/local/domain/1/data/guest/6f1b0f9e-1111-4d3c-8c2a-000000000001"
	const answer = `{"returncode":"0","message":"a\\b \"q\" ünï"}`
	if err := c.Write(ctx, resp, []byte(answer)); err != nil {
		t.Fatal(err)
	}
	if v, err := d.XenstoreRead(ctx, resp); err != nil || v != answer {
		t.Fatalf("CLI read %q, %v", v, err)
	}
	ls, err := d.XenstoreLs(ctx, "/local/domain/1")
	if err != nil || !strings.Contains(ls, resp) {
		t.Fatalf("xenstore-ls misses %s: %v\n%s", resp, err, ls)
	}

	// Removal by the CLI is seen by the client, with the real ENOENT.
	if err := d.XenstoreRm(ctx, req); err != nil {
		t.Fatal(err)
	}
	_, err = c.Read(ctx, req)
	var xe *xenstore.Error
	if !errors.Is(err, xenstore.ErrNotFound) || !errors.As(err, &xe) || xe.Code != "ENOENT" {
		t.Fatalf("read after rm: %v", err)
	}
	if names, err := c.Directory(ctx, "/local/domain/1/data/host"); err != nil || len(names) != 0 {
		t.Fatalf("Directory after rm = %q, %v", names, err)
	}
	// And a client Rm is seen by the CLI.
	if err := c.Rm(ctx, resp); err != nil {
		t.Fatal(err)
	}
	if _, err := d.XenstoreRead(ctx, resp); err == nil {
		t.Fatal("xenstore-read found a removed node")
	}
	if err := c.Mkdir(ctx, "/local/domain/1/data/host"); err != nil {
		t.Fatal(err)
	}
	if p, err := c.GetDomainPath(ctx, "1"); err != nil || p != "/local/domain/1" {
		t.Fatalf("GetDomainPath = %q, %v", p, err)
	}
}

func TestWatchFiresOnCLIWrite(t *testing.T) {
	d, c, ctx := setup(t)
	const dir = "/local/domain/1/data/host"
	if err := c.Mkdir(ctx, dir); err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, dir, "nova")
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev != (xenstore.Event{Path: dir, Token: "nova"}) {
		t.Fatalf("initial event %+v", ev)
	}
	if err := d.XenstoreWrite(ctx, dir+"/r1", `{"name":"features"}`); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev.Path != dir+"/r1" || ev.Token != "nova" {
		t.Fatalf("event %+v", ev)
	}
	// Calls made while events arrive still get their replies.
	if v, err := c.Read(ctx, dir+"/r1"); err != nil || string(v) != `{"name":"features"}` {
		t.Fatalf("Read = %q, %v", v, err)
	}
	if err := d.XenstoreRm(ctx, dir+"/r1"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev.Path != dir+"/r1" {
		t.Fatalf("rm event %+v", ev)
	}
	if err := w.Unwatch(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-w.Events(); ok {
		t.Fatal("channel open after Unwatch")
	}
}

func TestTransactions(t *testing.T) {
	d, c, ctx := setup(t)
	const a, b = "/local/domain/1/data/guest/a", "/local/domain/1/data/guest/b"

	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, a, []byte("1")); err != nil {
			return err
		}
		if err := tx.Write(ctx, b, []byte("2")); err != nil {
			return err
		}
		// Not visible to others before the commit.
		if v, err := d.XenstoreRead(ctx, a); err == nil {
			return fmt.Errorf("uncommitted value visible to the CLI: %q", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{a: "1", b: "2"} {
		if v, err := d.XenstoreRead(ctx, p); err != nil || v != want {
			t.Fatalf("%s = %q, %v", p, v, err)
		}
	}

	// A conflicting write by the CLI makes the commit fail with EAGAIN; the
	// retry sees the new value.
	attempts := 0
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		attempts++
		v, err := tx.Read(ctx, a)
		if err != nil {
			return err
		}
		if attempts == 1 {
			if err := d.XenstoreWrite(ctx, a, "10"); err != nil {
				return err
			}
		}
		return tx.Write(ctx, a, append(v, '+'))
	})
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 2 {
		t.Fatalf("%d attempts, want 2 (conflict not detected?)", attempts)
	}
	if v, err := d.XenstoreRead(ctx, a); err != nil || v != "10+" {
		t.Fatalf("after retry %q, %v", v, err)
	}

	// An aborted transaction leaves nothing behind.
	boom := errors.New("boom")
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, "/local/domain/1/data/guest/aborted", []byte("x")); err != nil {
			return err
		}
		return boom
	})
	if err != boom {
		t.Fatalf("got %v", err)
	}
	if _, err := c.Read(ctx, "/local/domain/1/data/guest/aborted"); !errors.Is(err, xenstore.ErrNotFound) {
		t.Fatalf("aborted write visible: %v", err)
	}
}

func TestRestartBreaksConnection(t *testing.T) {
	d, c, ctx := setup(t)
	if err := c.Write(ctx, "/before", []byte("x")); err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, "/before", "")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, w)
	d.Restart(t)

	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client did not notice the restart")
	}
	if !errors.Is(c.Err(), xenstore.ErrDisconnected) {
		t.Fatalf("Err = %v", c.Err())
	}
	if _, ok := <-w.Events(); ok {
		t.Fatal("watch open after restart")
	}
	c2, err := xenstore.Dial(ctx, d.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	// A fresh, non-persistent daemon has forgotten the tree.
	if _, err := c2.Read(ctx, "/before"); !errors.Is(err, xenstore.ErrNotFound) {
		t.Fatalf("read after restart: %v", err)
	}
}

// oxenstored answers DIRECTORY on its socket with lists longer than
// XENSTORE_PAYLOAD_MAX; the client must accept them (150 nova requests
// written at once by the host is such a list).
func TestLongDirectory(t *testing.T) {
	d, c, ctx := setup(t)
	const dir = "/local/domain/1/data/host"
	var want, pairs []string
	for i := range 150 {
		id := fmt.Sprintf("%08x-0000-4000-8000-000000000000", i)
		want = append(want, id)
		pairs = append(pairs, dir+"/"+id, `{"name":"version","value":"agent"}`)
	}
	if err := d.XenstoreWrite(ctx, pairs...); err != nil {
		t.Fatal(err)
	}
	got, err := c.Directory(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("got %d names, want %d", len(got), len(want))
	}
	// The connection is still in step afterwards.
	if v, err := c.Read(ctx, dir+"/"+want[149]); err != nil || !strings.Contains(string(v), "version") {
		t.Fatalf("Read after long listing = %q, %v", v, err)
	}
}

// Relative paths on oxenstored's socket resolve under dom0's home, as they
// do in the test server by default.
func TestRelativePaths(t *testing.T) {
	d, c, ctx := setup(t)
	if err := c.Write(ctx, "data/host/r", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := d.XenstoreRead(ctx, "/local/domain/0/data/host/r"); err != nil || v != "v" {
		t.Fatalf("CLI read %q, %v", v, err)
	}
	w, err := c.Watch(ctx, "data/host", "")
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev.Path != "data/host" {
		t.Fatalf("initial event %+v", ev)
	}
	if err := d.XenstoreWrite(ctx, "/local/domain/0/data/host/s", "w"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w); ev.Path != "data/host/s" {
		t.Fatalf("event %+v: relative watches report relative paths", ev)
	}
}
