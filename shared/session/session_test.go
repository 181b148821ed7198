package session

import (
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// An exchange that attaches a descriptor to an event other than a handoff
// (a host-connected, a type this parser does not know) must not leave it
// open in the parser, which only takes descriptors from handoffs: found by
// FuzzFeedNext.
func TestNextClosesStrayDescriptor(t *testing.T) {
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	for _, ev := range []string{`{"type":"host-connected","session":"s1"}`, `{"type":"surprise"}`} {
		before := openFDs(t)
		exch, parser := packetPair(t)
		if _, _, err := exch.WriteMsgUnix([]byte(ev), unix.UnixRights(int(null.Fd())), nil); err != nil {
			t.Fatal(err)
		}
		exch.Close()
		feed := &Feed{conn: parser}
		got, f, err := feed.Next()
		if err != nil || f != nil {
			t.Fatalf("%s: event %+v, descriptor %v, error %v; want the event without a descriptor", ev, got, f, err)
		}
		feed.Close()
		if after := openFDs(t); after != before {
			t.Fatalf("%s: %d descriptors open before, %d after", ev, before, after)
		}
	}
}

// packetPair returns both ends of a SOCK_SEQPACKET pair, as an inbox
// connection and a message session are.
func packetPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// openFDs counts the process's open descriptors.
func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

// nonblocking reports whether fd's file description has O_NONBLOCK.
func nonblocking(t *testing.T, fd int) bool {
	t.Helper()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return flags&unix.O_NONBLOCK != 0
}

// A session handed over is non-blocking in the parser however the exchange
// passes it (a pollable *os.File, a net.Conn, a file it made blocking), and
// Send never makes the shared file description blocking: with File.Fd it
// did, and every idle session held a parser thread in read(2).
func TestHandoffDescriptorStaysNonBlocking(t *testing.T) {
	cases := map[string]func(t *testing.T) (syscall.Conn, int){
		"pollable *os.File": func(t *testing.T) (syscall.Conn, int) {
			a, _ := streamPair(t)
			if err := unix.SetNonblock(a, true); err != nil {
				t.Fatal(err)
			}
			return os.NewFile(uintptr(a), "a"), a
		},
		"net.Conn": func(t *testing.T) (syscall.Conn, int) {
			a, _ := streamPair(t)
			f := os.NewFile(uintptr(a), "a")
			c, err := net.FileConn(f) // a dup, non-blocking
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			var fd int
			rc, _ := c.(syscall.Conn).SyscallConn()
			_ = rc.Control(func(d uintptr) { fd = int(d) })
			return c.(syscall.Conn), fd
		},
		"blocking *os.File": func(t *testing.T) (syscall.Conn, int) {
			a, _ := streamPair(t)
			return os.NewFile(uintptr(a), "a"), a
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			c, fd := mk(t)
			wasNonblocking := nonblocking(t, fd)
			exch, parser := packetPair(t)
			out := &Outbox{conn: exch, done: make(chan struct{})}
			if err := out.Send(Event{Type: EventHandoff, Kind: KindStream, Session: "s"}, c); err != nil {
				t.Fatal(err)
			}
			if nonblocking(t, fd) != wasNonblocking {
				t.Fatalf("Send changed the exchange's descriptor's blocking mode")
			}
			feed := &Feed{conn: parser}
			_, f, err := feed.Next()
			if err != nil || f == nil {
				t.Fatalf("no descriptor: %v", err)
			}
			defer f.Close()
			rc, _ := f.SyscallConn()
			_ = rc.Control(func(d uintptr) {
				if !nonblocking(t, int(d)) {
					t.Error("the parser's descriptor is blocking")
				}
			})
			// Pollable: a read deadline works (it does only in the netpoller).
			if err := f.SetReadDeadline(time.Now().Add(10 * time.Millisecond)); err != nil {
				t.Fatalf("the parser's descriptor is not pollable: %v", err)
			}
		})
	}
}

// streamPair returns a connected pair of stream sockets' descriptors,
// closed with the test.
func streamPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	return fds[0], fds[1]
}
