package dataplane

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// aheadServer answers read-ahead runs with as many results as asked and
// hands each run's ticket to the test, as a plugin would keep it.
func aheadServer(t *testing.T) (sock string, tickets chan *Ticket) {
	tickets = make(chan *Ticket, 8)
	sock = startServer(t, func(ctx context.Context, req *pb.RunRequest) Answer {
		if tk := TicketFrom(ctx); tk != nil {
			tickets <- tk
			resp := &pb.RunResponse{}
			var blobs [][]byte
			for i := 0; i < int(req.ReadAheadRuns); i++ {
				resp.ReadAheadResults = append(resp.ReadAheadResults, &pb.ReadAheadResult{ResultJson: []byte("{}"), BlobSize: 2, More: true})
				blobs = append(blobs, []byte{byte(i), byte(i)})
			}
			return Answer{Resp: resp, Blobs: blobs}
		}
		return Answer{Resp: &pb.RunResponse{}}
	})
	return sock, tickets
}

func settleWithin(t *testing.T, tk *Ticket) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return tk.Settle(ctx)
}

func TestReadAheadClaimsAndQuery(t *testing.T) {
	sock, tickets := aheadServer(t)
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// All results claimed: the plugin learns the count without asking.
	a := c.ReadAhead(&pb.RunRequest{Command: "read"}, 3, nil)
	tk := <-tickets
	<-a.Ready()
	resp, err := a.Result()
	if err != nil || len(resp.ReadAheadResults) != 3 || string(resp.Blob) != "\x00\x00\x01\x01\x02\x02" {
		t.Fatalf("results %v, blob %q: %v", resp.GetReadAheadResults(), resp.GetBlob(), err)
	}
	for i := 0; i < 3; i++ {
		if !a.Claim(i) {
			t.Fatalf("claim %d refused", i)
		}
	}
	if n, err := settleWithin(t, tk); n != 3 || err != nil {
		t.Fatalf("settled at %d (%v), want 3", n, err)
	}

	// The plugin asks about a run claimed in part and one carrying on from
	// it: both are released at what the host got, and no later claim holds.
	a = c.ReadAhead(&pb.RunRequest{Command: "read"}, 4, nil)
	first := <-tickets
	<-a.Ready()
	b := c.ReadAhead(&pb.RunRequest{Command: "read"}, 4, a)
	second := <-tickets
	if !second.Continues(first) {
		t.Fatal("the second run does not say it carries on from the first")
	}
	a.Claim(0)
	if n, err := settleWithin(t, first); n != 1 || err != nil {
		t.Fatalf("first run settled at %d (%v), want 1", n, err)
	}
	if n, err := settleWithin(t, second); n != 0 || err != nil {
		t.Fatalf("second run settled at %d (%v), want 0", n, err)
	}
	if a.Claim(1) {
		t.Fatal("claim accepted after the plugin got the run back")
	}
	<-b.Ready()
	if b.Claim(0) {
		t.Fatal("claim of the released second run accepted")
	}
	// A run carrying on from a released one is not even sent.
	if x := c.ReadAhead(&pb.RunRequest{Command: "read"}, 1, a); x.Claim(0) {
		t.Fatal("a run after a released one was claimed")
	}
}

func TestReadAheadConnectionLost(t *testing.T) {
	sock, tickets := aheadServer(t)
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	a := c.ReadAhead(&pb.RunRequest{Command: "read"}, 2, nil)
	tk := <-tickets
	<-a.Ready()
	a.Claim(0)
	c.Close()
	if _, err := settleWithin(t, tk); !errors.Is(err, ErrUnsettled) {
		t.Fatalf("settle after the parser's connection closed: %v, want ErrUnsettled", err)
	}
}
