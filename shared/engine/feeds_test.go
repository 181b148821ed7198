package engine

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
)

// echo answers every byte stream with what it reads.
type echo struct{}

func (echo) Name() string             { return "echo" }
func (echo) Options() dialect.Options { return dialect.Options{} }
func (echo) ServeStream(_ context.Context, s dialect.StreamSession) error {
	_, err := io.Copy(s, s)
	return err
}
func (echo) HandleMessage(context.Context, dialect.Dispatcher, []byte) []byte { return nil }

// A handoff of a kind this engine does not know (a later exchange's) is
// refused, its descriptor closed; the feed goes on serving the next one.
func TestUnknownSessionKindRefused(t *testing.T) {
	dir, err := os.MkdirTemp("", "eng") // short: inbox paths are capped at 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	e := New("parser-test", []dialect.Dialect{echo{}}, hclog.NewNullLogger(), nil)
	defer e.Close()
	resp, err := e.Configure(context.Background(), &pb.ConfigureParserRequest{
		Channels: []*pb.ChannelConfig{{Name: "c", Dialect: "echo"}}, InboxDir: dir, RuntimeDir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := session.DialOutbox(resp.Inboxes[0].Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	handoff := func(kind string) net.Conn {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		remote := os.NewFile(uintptr(fds[1]), "guest")
		defer remote.Close()
		local := os.NewFile(uintptr(fds[0]), "host")
		conn, err := net.FileConn(local)
		local.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := out.Send(session.Event{Type: session.EventHandoff, Channel: "c", Session: kind, Kind: kind}, remote); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		return conn
	}
	unknown := handoff("datagram")
	defer unknown.Close()
	if n, err := unknown.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a session of an unknown kind: read %d, %v; want EOF (refused)", n, err)
	}
	known := handoff(session.KindStream)
	defer known.Close()
	msg, _ := json.Marshal("still serving")
	if _, err := known.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(known, got); err != nil || string(got) != string(msg) {
		t.Fatalf("the next session: %q, %v", got, err)
	}
}
