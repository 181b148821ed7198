package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/session"
	"golang.org/x/sys/unix"
)

// fakeVirtio lays out a sysfs root and a /dev root like a guest with
// virtio_console and no udev (an initramfs): /sys/class/virtio-ports/*/name
// and /dev/vportNpM, without /dev/virtio-ports.
type fakeVirtio struct {
	sys, dev string
}

func newFakeVirtio(t *testing.T) *fakeVirtio {
	root := t.TempDir()
	f := &fakeVirtio{sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}
	for _, d := range []string{filepath.Join(f.sys, "class", "virtio-ports"), f.dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// port declares a port in sysfs; with name "" it has no name attribute
// yet, as virtio_console creates it only when the host sends the name.
func (f *fakeVirtio) port(t *testing.T, vport, name string) {
	t.Helper()
	d := filepath.Join(f.sys, "class", "virtio-ports", vport)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if name == "" {
		return
	}
	if err := os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// node creates /dev/<vport> as a FIFO: like a virtio port on the read side,
// a reader sees data, EOF and POLLHUP while the writer (the "host") is away,
// and SIGIO under O_ASYNC.
func (f *fakeVirtio) node(t *testing.T, vport string) string {
	t.Helper()
	p := filepath.Join(f.dev, vport)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (f *fakeVirtio) exchange() *Exchange {
	return &Exchange{SysfsRoot: f.sys, DevRoot: f.dev, devReadOnly: true}
}

func TestVirtioResolve(t *testing.T) {
	f := newFakeVirtio(t)
	f.port(t, "vport0p1", "com.redhat.spice.0")
	f.port(t, "vport0p2", "org.qemu.guest_agent.0")
	f.port(t, "vport0p3", "org.example.other")
	f.node(t, "vport0p1")
	p2 := f.node(t, "vport0p2")
	p3 := f.node(t, "vport0p3")
	e := f.exchange()

	for _, tc := range []struct{ path, want string }{
		{"", p2}, // default name, no udev symlink: found through sysfs
		{"org.qemu.guest_agent.0", p2},
		{"org.example.other", p3},
		{filepath.Join(f.dev, "virtio-ports", "org.example.other"), p3},
		{p3, p3},
	} {
		got, err := e.resolveVirtio(e.virtioTarget(tc.path))
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.path, got, err, tc.want)
		}
	}

	// With udev's symlink, the symlink is used as is.
	vp := filepath.Join(f.dev, "virtio-ports")
	if err := os.Mkdir(vp, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(vp, "org.qemu.guest_agent.0")
	if err := os.Symlink("../vport0p2", link); err != nil {
		t.Fatal(err)
	}
	if got, err := e.resolveVirtio(e.virtioTarget("")); err != nil || got != link {
		t.Errorf("default with udev: %q, %v", got, err)
	}

	// Missing: a clear error that says what was looked for.
	for _, p := range []string{"org.nope.0", filepath.Join(f.dev, "nope")} {
		_, err := e.resolveVirtio(e.virtioTarget(p))
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope") {
			t.Errorf("%q: %v", p, err)
		}
	}
	// A port whose name has not arrived yet: "soon", not "never".
	f.port(t, "vport0p4", "")
	if _, err := e.resolveVirtio(e.virtioTarget("org.nope.0")); !errors.Is(err, errSoon) {
		t.Errorf("with an unnamed port: %v", err)
	}
}

func TestVirtioMissingDevice(t *testing.T) {
	f := newFakeVirtio(t)
	p := newParserSide(t)
	e := f.exchange()
	_, err := e.Open(context.Background(), channel(t, methodVirtio, "", nil), p.out)
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), defaultVirtioName) {
		t.Fatalf("Open without the port: %v", err)
	}
	t.Log(err)
	waitIdle(t, e)
}

// writeHost opens the "host" end and writes msg.
func writeHost(t *testing.T, path, msg string) *os.File {
	t.Helper()
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if msg != "" {
		if _, err := w.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// TestVirtioHostEvents drives the connected/disconnected state machine with
// real SIGIO deliveries and real POLLHUP, and checks what a parser reading
// the handed descriptor sees.
func TestVirtioHostEvents(t *testing.T) {
	f := newFakeVirtio(t)
	f.port(t, "vport0p1", defaultVirtioName)
	dev := f.node(t, "vport0p1")
	p := newParserSide(t)
	e := f.exchange()
	resolved, _ := open(t, e, p, channel(t, methodVirtio, "", nil))
	if resolved != dev {
		t.Errorf("resolved %q, want %q", resolved, dev)
	}
	h := p.next(5 * time.Second)
	if h.ev.Type != session.EventHandoff || !h.ev.Persistent || h.ev.Kind != session.KindStream || h.ev.Origin != "virtio-serial:"+dev {
		t.Fatalf("handoff %+v", h.ev)
	}
	id := h.ev.Session
	port := h.f
	defer port.Close()
	// The descriptor is non-blocking for the parser, and its SIGIO goes to
	// the exchange (this process here).
	fl, _ := unix.FcntlInt(port.Fd(), unix.F_GETFL, 0)
	if fl&unix.O_NONBLOCK == 0 || fl&unix.O_ASYNC == 0 {
		t.Errorf("flags %#x: want O_NONBLOCK|O_ASYNC", fl)
	}
	if owner, _ := unix.FcntlInt(port.Fd(), unix.F_GETOWN, 0); owner != os.Getpid() {
		t.Errorf("SIGIO owner %d, want %d", owner, os.Getpid())
	}

	// Host connects and sends a request: the parser reads it.
	host := writeHost(t, dev, "{\"execute\":\"guest-ping\"}\n")
	if got := readFull(t, port, 25); string(got) != "{\"execute\":\"guest-ping\"}\n" {
		t.Errorf("read %q", got)
	}
	// Host goes away: one EventHostDisconnected for this session, and the
	// parser's read returns EOF (it must wait for the event, not poll).
	host.Close()
	ev := p.nextOf(session.EventHostDisconnected, 5*time.Second).ev
	if ev.Session != id || ev.Channel != "ch" {
		t.Errorf("disconnect event %+v", ev)
	}
	port.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := port.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Errorf("read while the host is away: %d, %v; want EOF", n, err)
	}
	// Nothing more while idle: no re-announcements, no timers.
	p.none(300 * time.Millisecond)

	// Host back: EventHostConnected, and the stream resumes.
	host = writeHost(t, dev, "again\n")
	defer host.Close()
	ev = p.nextOf(session.EventHostConnected, 5*time.Second).ev
	if ev.Session != id {
		t.Errorf("connect event %+v", ev)
	}
	if got := readFull(t, port, 6); string(got) != "again\n" {
		t.Errorf("read after reconnect %q", got)
	}
	p.none(300*time.Millisecond, session.EventHostConnected)
}

// TestVirtioRetryPathAndUnplug: with retry_path the channel opens before the
// port exists and hands it over when it appears (inotify, the name arriving
// late); an unplugged port is handed over again when it comes back.
func TestVirtioRetryPathAndUnplug(t *testing.T) {
	f := newFakeVirtio(t)
	p := newParserSide(t)
	e := f.exchange()
	resolved, _ := open(t, e, p, channel(t, methodVirtio, "", map[string]any{"retry_path": true}))
	if want := filepath.Join(f.dev, "virtio-ports", defaultVirtioName); resolved != want {
		t.Errorf("resolved %q, want %q", resolved, want)
	}
	p.none(200 * time.Millisecond)

	// The node appears before its name is known, the name a little later
	// (no directory event for that one).
	f.port(t, "vport1p1", "")
	dev := f.node(t, "vport1p1")
	time.Sleep(150 * time.Millisecond)
	f.port(t, "vport1p1", defaultVirtioName)
	h := p.next(5 * time.Second)
	if h.ev.Type != session.EventHandoff || h.ev.Origin != "virtio-serial:"+dev {
		t.Fatalf("got %+v", h.ev)
	}
	id := h.ev.Session

	// Unplug: the node goes away.
	if err := os.Remove(dev); err != nil {
		t.Fatal(err)
	}
	p.none(300 * time.Millisecond)
	h.f.Close()
	// Plugged again: a new handoff of the same persistent session.
	dev = f.node(t, "vport1p1")
	h2 := p.nextOf(session.EventHandoff, 5*time.Second)
	defer h2.f.Close()
	if h2.ev.Session != id || !h2.ev.Persistent {
		t.Errorf("second handoff %+v, want session %q", h2.ev, id)
	}
	host := writeHost(t, dev, "hi\n")
	defer host.Close()
	if got := readFull(t, h2.f, 3); string(got) != "hi\n" {
		t.Errorf("read %q", got)
	}
}

// TestVirtioBusy: a port admits one opener; while the channel holds it a
// second open of the same channel waits for the first to close.
func TestVirtioReopen(t *testing.T) {
	f := newFakeVirtio(t)
	f.port(t, "vport0p1", defaultVirtioName)
	f.node(t, "vport0p1")
	p := newParserSide(t)
	e := f.exchange()
	for i := 0; i < 10; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		if _, err := e.Open(ctx, channel(t, methodVirtio, "", nil), p.out); err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		r := p.nextOf(session.EventHandoff, 5*time.Second)
		r.f.Close()
		cancel()
	}
	waitIdle(t, e)
}
