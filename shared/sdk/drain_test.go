package sdk

import (
	"context"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// A request counts from its handler's start until its reply was written
// (the data plane calls Done then), so a drain never ends between the two.
func TestInFlightCountsUntilTheReplyIsWritten(t *testing.T) {
	var f inFlight
	select {
	case <-f.drained():
	default:
		t.Fatal("nothing runs: drained at once")
	}
	release := make(chan struct{})
	h := f.counted(func(context.Context, *pb.RunRequest) dataplane.Answer {
		<-release
		return dataplane.Answer{Resp: &pb.RunResponse{}}
	})
	replied := make(chan dataplane.Answer)
	go func() { replied <- h(context.Background(), &pb.RunRequest{}) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		f.mu.Lock()
		n := f.n
		f.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the running handler is not counted")
		}
	}
	drained := f.drained()
	close(release)
	reply := <-replied
	select {
	case <-drained:
		t.Fatal("drained before the reply was written")
	case <-time.After(20 * time.Millisecond):
	}
	reply.Done() // the data plane wrote the reply
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("not drained after the reply was written")
	}
}
