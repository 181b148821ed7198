package sdk

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// A command plugin that gets SIGTERM finishes what it runs before it exits:
// the supervisor sends it when the plugin's binary was removed or replaced
// (a package removal or upgrade), after it has routed the plugin's commands
// elsewhere or nowhere. The plugin takes no new data plane connection, lets
// every request in flight write its reply, and exits. The supervisor's
// ordinary stop (go-plugin's) is unchanged: it stops the plugin at once.

// inFlight counts the requests a command plugin is running.
type inFlight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n comes back to 0, if someone waits
}

func (f *inFlight) begin() {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
}

func (f *inFlight) end() {
	f.mu.Lock()
	f.n--
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
	f.mu.Unlock()
}

// drained returns a channel closed once no request is running.
func (f *inFlight) drained() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		done := make(chan struct{})
		close(done)
		return done
	}
	if f.idle == nil {
		f.idle = make(chan struct{})
	}
	return f.idle
}

// counted wraps a data plane handler so that a request counts until its
// reply has been written (the data plane calls Done then).
func (f *inFlight) counted(h dataplane.Handler) dataplane.Handler {
	return func(ctx context.Context, req *pb.RunRequest) dataplane.Answer {
		f.begin()
		reply := h(ctx, req)
		done := reply.Done
		reply.Done = func() {
			if done != nil {
				done()
			}
			f.end()
		}
		return reply
	}
}

// drainOnSIGTERM makes the plugin finish its requests in flight and exit on
// SIGTERM; stopServing closes its data plane listener, shutdown runs the
// plugin's Shutdown hook.
func (s *commandServer) drainOnSIGTERM(shutdown func()) {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		s.mu.Lock()
		if s.listener != nil {
			s.listener.Close()
		}
		s.mu.Unlock()
		s.p.Logger.Debug("stopping: finishing the requests in flight")
		<-s.running.drained()
		shutdown()
		os.Exit(0)
	}()
}
