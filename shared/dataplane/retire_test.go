package dataplane

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

// TestServerRetire: a plugin retires only with nothing running and
// nothing busy, a parser's idle connection notwithstanding, and takes no
// connection afterwards.
func TestServerRetire(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := &Server{Handler: func(ctx context.Context, req *pb.RunRequest) Answer {
		if req.Command == "slow" {
			<-release
		}
		return Answer{Resp: &pb.RunResponse{ResultJson: []byte(`{}`)}}
	}, Logger: hclog.NewNullLogger()}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()

	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	slow := make(chan error, 1)
	go func() {
		_, err := c.Call(context.Background(), &pb.RunRequest{Command: "slow"})
		slow <- err
	}()
	for srv.running.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	idle := func() string { return "" }
	if why := srv.Retire(50*time.Millisecond, idle); why != "a command is running" {
		t.Fatalf("retired with a command running: %q", why)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if why := srv.Retire(time.Second, func() string { return "an open handle" }); why != "an open handle" {
		t.Fatalf("busy plugin: %q", why)
	}
	// Still serving after a refusal, on the same connection.
	if _, err := c.Call(context.Background(), &pb.RunRequest{Command: "x"}); err != nil {
		t.Fatalf("call after a busy answer: %v", err)
	}
	// An idle parser connection does not keep the plugin.
	if why := srv.Retire(time.Second, idle); why != "" {
		t.Fatalf("idle plugin did not retire: %q", why)
	}
	if err := <-served; err != nil {
		t.Fatalf("serve after retiring: %v", err)
	}
	if c, err := Dial(context.Background(), sock); err == nil {
		c.Close()
		t.Fatal("a retired plugin took a connection")
	}
	if why := srv.Retire(time.Second, idle); why == "" {
		t.Fatal("retired twice")
	}
}
