package session

import (
	"net"
	"os"
	"testing"

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
