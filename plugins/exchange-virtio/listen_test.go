package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/session"
	"golang.org/x/sys/unix"
)

func dial(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestUnixListenSessions(t *testing.T) {
	p := newParserSide(t)
	e := &Exchange{}
	fdsBefore := openFDs(t)
	// A directory that does not exist yet: the exchange creates it.
	path := filepath.Join(t.TempDir(), "run", "qga.sock")
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	gid := os.Getgid()
	resolved, stop := open(t, e, p, channel(t, methodUnix, path, map[string]any{
		"socket_mode":  "0660",
		"socket_owner": me.Username,       // by name
		"socket_group": strconv.Itoa(gid), // by id
	}))
	if resolved != path {
		t.Errorf("resolved %q, want %q", resolved, path)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o7777 != 0o660 {
		t.Errorf("socket mode %#o, want socket with 0660", st.Mode)
	}
	if int(st.Uid) != os.Getuid() || int(st.Gid) != gid {
		t.Errorf("socket owner %d:%d, want %d:%d", st.Uid, st.Gid, os.Getuid(), gid)
	}

	// Two concurrent clients, each its own session.
	clients := []net.Conn{dial(t, path), dial(t, path)}
	var files []*os.File
	seen := map[string]bool{}
	for i := range clients {
		r := p.next(5 * time.Second)
		ev := r.ev
		if ev.Type != session.EventHandoff || ev.Kind != session.KindStream || ev.Persistent || ev.Channel != "ch" {
			t.Fatalf("event %d: %+v", i, ev)
		}
		if ev.Origin != "unix:"+path {
			t.Errorf("origin %q", ev.Origin)
		}
		if ev.Peer == nil || int(ev.Peer.PID) != os.Getpid() || int(ev.Peer.UID) != os.Getuid() || int(ev.Peer.GID) != os.Getgid() {
			t.Errorf("peer %+v, want pid %d uid %d gid %d", ev.Peer, os.Getpid(), os.Getuid(), os.Getgid())
		}
		if groups, _ := os.Getgroups(); ev.Peer != nil && len(ev.Peer.Groups) != len(groups) {
			t.Errorf("peer's supplementary groups %v, want this process's %v", ev.Peer.Groups, groups)
		}
		if seen[ev.Session] {
			t.Errorf("session id %q reused", ev.Session)
		}
		seen[ev.Session] = true
		// The parser relies on a non-blocking descriptor (netpoller).
		if fl, _ := unix.FcntlInt(r.f.Fd(), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
			t.Errorf("handed descriptor is blocking")
		}
		files = append(files, r.f)
	}
	// Bytes flow both ways on each session; the sessions are independent,
	// and the clients were accepted in order.
	for i, c := range clients {
		msg := "request " + strconv.Itoa(i) + "\n"
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if got := string(readFull(t, files[i], len(msg))); got != msg {
			t.Errorf("session %d read %q, want %q", i, got, msg)
		}
		reply := "reply " + strconv.Itoa(i) + "\n"
		if _, err := files[i].Write([]byte(reply)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(reply))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != reply {
			t.Errorf("client %d read %q, %v", i, buf, err)
		}
	}
	// The exchange kept no copy: the parser closing a session is an EOF
	// for its client.
	files[0].Close()
	clients[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := clients[0].Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client read after the session closed: %d, %v; want EOF", n, err)
	}

	// Closing the channel removes the socket and releases every descriptor
	// (the parser's sessions live on).
	stop()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after close: %v", err)
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Errorf("connect succeeded after close")
	}
	if _, err := files[1].Write([]byte("still here\n")); err != nil {
		t.Errorf("open session broken by the channel close: %v", err)
	}
	files[1].Close()
	clients[1].Close()
	if n := openFDs(t); n > fdsBefore+3 { // +3: the parser side's inbox, outbox, feed
		t.Errorf("%d descriptors open after close, %d before", n, fdsBefore)
	}
}

func TestUnixListenDefaultMode(t *testing.T) {
	p := newParserSide(t)
	path := filepath.Join(t.TempDir(), "qga.sock")
	old := syscall.Umask(0) // the default must not depend on the umask
	defer syscall.Umask(old)
	open(t, &Exchange{}, p, channel(t, methodUnix, path, nil))
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("default mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestUnixListenSocketDir: the socket's directory is created searchable
// but not listable, and an existing one (the agent's 0700 runtime
// directory) becomes searchable when the socket is open to others than its
// owner, as the command monitor's 0770 socket is.
func TestUnixListenSocketDir(t *testing.T) {
	p := newParserSide(t)
	old := syscall.Umask(0o077) // the created mode must not depend on the umask
	defer syscall.Umask(old)
	mode := func(path string) uint32 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Mode & 0o7777
	}
	base := t.TempDir()

	created := filepath.Join(base, "new", "deeper")
	open(t, &Exchange{}, p, channel(t, methodUnix, filepath.Join(created, "commands.sock"), map[string]any{"socket_mode": "0770"}))
	if m := mode(created); m != 0o711 {
		t.Errorf("created directory mode %#o, want 0711", m)
	}

	private := filepath.Join(base, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	open(t, &Exchange{}, p, channel(t, methodUnix, filepath.Join(private, "owner-only.sock"), map[string]any{"socket_mode": "0600"}))
	if m := mode(private); m != 0o700 {
		t.Errorf("a socket for its owner only changed its directory to %#o", m)
	}
	open(t, &Exchange{}, p, channel(t, methodUnix, filepath.Join(private, "commands.sock"), map[string]any{"socket_mode": "0770"}))
	if m := mode(private); m != 0o711 {
		t.Errorf("directory of a 0770 socket: mode %#o, want 0711", m)
	}

	// Someone else's directory is not changed: a clear error instead.
	if os.Geteuid() == 0 {
		foreign := filepath.Join(base, "foreign")
		if err := os.Mkdir(foreign, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(foreign, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		_, err := (&Exchange{}).Open(context.Background(), channel(t, methodUnix, filepath.Join(foreign, "c.sock"), map[string]any{"socket_mode": "0770"}), p.out)
		if err == nil || !strings.Contains(err.Error(), "search permission") {
			t.Errorf("open in another user's 0700 directory: %v", err)
		}
		if m := mode(foreign); m != 0o700 {
			t.Errorf("another user's directory changed to %#o", m)
		}
	}
}

func TestUnixListenStaleAndLive(t *testing.T) {
	p := newParserSide(t)
	dir := t.TempDir()

	// A socket left behind by a killed agent: replaced.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(stale); err != nil {
		t.Fatal("the stale socket was not left behind")
	}
	e := &Exchange{}
	_, stop := open(t, e, p, channel(t, methodUnix, stale, nil))
	c := dial(t, stale)
	if r := p.next(5 * time.Second); r.ev.Type != session.EventHandoff {
		t.Fatalf("got %+v", r.ev)
	} else {
		r.f.Close()
	}
	c.Close()
	stop()

	// A live listener: refused, and left alone.
	live := filepath.Join(dir, "live.sock")
	ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: live, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = e.Open(context.Background(), channel(t, methodUnix, live, nil), p.out)
	if err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("Open on a live socket: %v", err)
	}
	if _, err := os.Lstat(live); err != nil {
		t.Errorf("the live socket was removed: %v", err)
	}
	waitIdle(t, e)

	// Not a socket: refused, not deleted.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Open(context.Background(), channel(t, methodUnix, file, nil), p.out); err == nil ||
		!strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Open on a regular file: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the file was removed")
	}

	// Bad options.
	for _, opts := range []map[string]any{
		{"socket_mode": "rw-rw----"},
		{"socket_mode": "01777"},
		{"socket_owner": "no-such-user-here"},
		{"socket_group": "no-such-group-here"},
		{"socket_owner": -3},
		{"socket_mode": 689},
	} {
		if _, err := e.Open(context.Background(), channel(t, methodUnix, filepath.Join(dir, "o.sock"), opts), p.out); err == nil {
			t.Errorf("options %v accepted", opts)
		} else {
			t.Logf("options %v: %v", opts, err)
		}
	}
	if _, err := e.Open(context.Background(), channel(t, methodUnix, "", nil), p.out); err == nil {
		t.Error("empty path accepted")
	}
	waitIdle(t, e)
}

func TestUnixListenMaxConnections(t *testing.T) {
	p := newParserSide(t)
	path := filepath.Join(t.TempDir(), "qga.sock")
	open(t, &Exchange{}, p, channel(t, methodUnix, path, map[string]any{"max_connections": 2}))

	c1, c2 := dial(t, path), dial(t, path)
	r1, r2 := p.next(5*time.Second), p.next(5*time.Second)
	// The third is closed at once: its client reads EOF, the parser hears
	// nothing.
	c3 := dial(t, path)
	c3.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c3.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("third connection: %v, want EOF", err)
	}
	p.none(200 * time.Millisecond)

	// A session ending (the parser closes it) frees its slot.
	r1.f.Close()
	c1.Close()
	c4 := dial(t, path)
	r4 := p.next(5 * time.Second)
	if _, err := c4.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := readFull(t, r4.f, 1); string(got) != "x" {
		t.Errorf("read %q", got)
	}
	// Full again.
	c5 := dial(t, path)
	c5.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c5.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("fifth connection: %v, want EOF", err)
	}
	r2.f.Close()
	r4.f.Close()
	c2.Close()
}

// TestReopenWaitsForPrevious: a channel reopened right after its previous
// instance was cancelled (a parser restart) must not find its own socket
// "in use" nor lose the new socket to the old instance's cleanup.
func TestReopenWaitsForPrevious(t *testing.T) {
	p := newParserSide(t)
	e := &Exchange{}
	path := filepath.Join(t.TempDir(), "qga.sock")
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		if _, err := e.Open(ctx, channel(t, methodUnix, path, nil), p.out); err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		cancel()
	}
	_, stop := open(t, e, p, channel(t, methodUnix, path, nil))
	c := dial(t, path)
	if r := p.next(5 * time.Second); r.ev.Type != session.EventHandoff {
		t.Fatalf("got %+v", r.ev)
	} else {
		r.f.Close()
	}
	c.Close()
	stop()
}

func TestParseVsockAddr(t *testing.T) {
	for _, tc := range []struct {
		in        string
		cid, port uint32
		bad       bool
	}{
		{in: "1234", cid: unix.VMADDR_CID_ANY, port: 1234},
		{in: "3:1234", cid: 3, port: 1234},
		{in: "-1:1234", cid: unix.VMADDR_CID_ANY, port: 1234},
		{in: "any:9", cid: unix.VMADDR_CID_ANY, port: 9},
		{in: "", bad: true},
		{in: "x:1", bad: true},
		{in: "3:", bad: true},
		{in: "3:99999999999", bad: true},
	} {
		cid, port, err := parseVsockAddr(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q accepted", tc.in)
			}
			continue
		}
		if err != nil || cid != tc.cid || port != tc.port {
			t.Errorf("%q: %d:%d %v, want %d:%d", tc.in, cid, port, err, tc.cid, tc.port)
		}
	}
}

// vsockAvailable skips when this kernel has no AF_VSOCK at all.
func vsockAvailable(t *testing.T) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Skipf("AF_VSOCK not available here (%v): the vsock-listen tests need it", err)
	}
	unix.Close(fd)
}

func TestVsockListen(t *testing.T) {
	vsockAvailable(t)
	p := newParserSide(t)
	e := &Exchange{}
	port := uint32(40000 + os.Getpid()%20000)
	addr := strconv.Itoa(int(port))
	resolved, stop := open(t, e, p, channel(t, methodVsock, addr, nil))
	if resolved != "-1:"+addr {
		t.Errorf("resolved %q", resolved)
	}
	// Bound: a second listener on the port is refused with a clear error.
	if _, err := e.Open(context.Background(), channel(t, methodVsock, "-1:"+addr, nil), p.out); err == nil ||
		!strings.Contains(err.Error(), "bind") {
		t.Errorf("second bind: %v", err)
	}
	stop()
	// Released on close: the port can be bound again.
	_, stop = open(t, e, p, channel(t, methodVsock, addr, nil))
	stop()

	// A CID that is not ours: a clear bind error.
	if _, err := e.Open(context.Background(), channel(t, methodVsock, "12345:"+addr, nil), p.out); err == nil ||
		!strings.Contains(err.Error(), "vsock-listen: bind 12345:") {
		t.Errorf("bind to a foreign CID: %v", err)
	}
	waitIdle(t, e)
}

// TestVsockSessions connects through the loopback transport; without one
// (no vsock_loopback module, no vhost) there is no way to reach our own
// listener and the test is skipped.
func TestVsockSessions(t *testing.T) {
	vsockAvailable(t)
	_ = exec("modprobe", "vsock_loopback")
	p := newParserSide(t)
	port := uint32(40000 + (os.Getpid()+1)%20000)
	open(t, &Exchange{}, p, channel(t, methodVsock, strconv.Itoa(int(port)), map[string]any{"max_connections": 1}))

	cfd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	client := os.NewFile(uintptr(cfd), "vsock-client")
	defer client.Close()
	tv := unix.Timeval{Sec: 2}
	_ = unix.SetsockoptTimeval(cfd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv)
	if err := unix.Connect(cfd, &unix.SockaddrVM{CID: unix.VMADDR_CID_LOCAL, Port: port}); err != nil {
		t.Skipf("no vsock loopback transport in this kernel (connect to CID 1: %v); the listener itself is tested by TestVsockListen", err)
	}
	r := p.next(5 * time.Second)
	if r.ev.Type != session.EventHandoff || !strings.HasPrefix(r.ev.Origin, "vsock:") || r.ev.Peer != nil {
		t.Fatalf("got %+v", r.ev)
	}
	if _, err := client.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if got := readFull(t, r.f, 5); string(got) != "ping\n" {
		t.Errorf("read %q", got)
	}
	r.f.Close()
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]uint32{`"0660"`: 0o660, `"600"`: 0o600, `660`: 0o660, `0`: 0, `"0777"`: 0o777} {
		got, err := parseMode(json.RawMessage(in))
		if err != nil || got != want {
			t.Errorf("%s: %#o, %v; want %#o", in, got, err, want)
		}
	}
	for _, in := range []string{`"rw"`, `"01777"`, `689`, `1.5`, `true`, `-1`} {
		if _, err := parseMode(json.RawMessage(in)); err == nil {
			t.Errorf("%s accepted", in)
		}
	}
}
