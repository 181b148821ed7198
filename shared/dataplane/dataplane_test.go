package dataplane

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

func startServer(t testing.TB, h Handler) string {
	sock := filepath.Join(t.TempDir(), "dp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = Serve(ctx, ln, h, hclog.NewNullLogger()) }()
	return sock
}

func echo(_ context.Context, req *pb.RunRequest) Answer {
	// The request blob is recycled after the handler: copy it.
	return Answer{Resp: &pb.RunResponse{ResultJson: req.ArgsJson, Blob: append([]byte(nil), req.Blob...)}}
}

func TestRoundTripAndBlobs(t *testing.T) {
	c, err := Dial(context.Background(), startServer(t, echo))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	blob := bytes.Repeat([]byte{1, 2, 3, 4}, 12<<20) // 48 MiB
	resp, err := c.Call(context.Background(), &pb.RunRequest{Command: "x", ArgsJson: []byte(`{"a":1}`), Blob: blob})
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.ResultJson) != `{"a":1}` || !bytes.Equal(resp.Blob, blob) {
		t.Fatalf("echo mismatch: %s, %d bytes", resp.ResultJson, len(resp.Blob))
	}
	if _, err := c.Call(context.Background(), &pb.RunRequest{Blob: make([]byte, MaxBlob+1)}); err == nil {
		t.Fatal("a blob over MaxBlob must be refused")
	}
}

func TestConnectionLostFailsPending(t *testing.T) {
	block := make(chan struct{})
	sock := startServer(t, func(ctx context.Context, req *pb.RunRequest) Answer {
		<-block
		return Answer{Resp: &pb.RunResponse{}}
	})
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Call(context.Background(), &pb.RunRequest{Command: "slow"})
		errc <- err
	}()
	for {
		c.mu.Lock()
		n := len(c.pending)
		c.mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.conn.(*net.UnixConn).CloseRead()
	err = <-errc
	close(block)
	if err == nil {
		t.Fatal("a pending call must fail when the connection drops")
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	c, err := Dial(context.Background(), startServer(b, echo))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := &pb.RunRequest{Command: "guest-get-time", ArgsJson: []byte(`{}`)}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Call(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}
