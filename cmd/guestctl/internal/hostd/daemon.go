// Package hostd is guestctl daemon: the host side of negotiator's
// guest-to-host channel for every running guest at once. One goroutine per
// guest keeps a connection to the guest's channel socket and answers its
// calls from the host's command directories; guests are found through a
// domains.Source and followed as they start and stop.
package hostd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/domains"
	"github.com/guest-agent/guest-agent/shared/negotiator"
	"github.com/hashicorp/go-hclog"
)

// Options configure the daemon; zero durations take the defaults below.
type Options struct {
	Source domains.Source
	// Runner answers execute and list_commands; NEGOTIATOR_GUEST is added
	// per command.
	Runner *negotiator.Runner
	// Rescan is how often the running guests are listed: new guests are
	// picked up and stopped ones dropped within it.
	Rescan time.Duration
	// Recheck is how often a guest without the channel is looked at again
	// (the original ignores it for ever) when the source can list names
	// without reading every domain.
	Recheck time.Duration
	// BackoffMin and BackoffMax bound the delay before reconnecting to a
	// guest whose connection failed or broke (doubling, with jitter).
	BackoffMin, BackoffMax time.Duration
	// Serve bounds each request and reply.
	Serve  negotiator.ServeOptions
	Logger hclog.Logger
}

// Defaults of Options.
const (
	DefaultRescan     = 2 * time.Second
	DefaultRecheck    = 30 * time.Second
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 30 * time.Second
)

// Daemon serves every guest the source lists.
type Daemon struct {
	o       Options
	mu      sync.Mutex
	workers map[string]*worker // by guest name
	// noChannel remembers when a guest without the channel was last
	// looked at (name-listing sources only).
	noChannel map[string]time.Time
}

type worker struct {
	socket string
	cancel context.CancelFunc
	done   chan struct{}
}

// New checks the options and fills in the defaults.
func New(o Options) (*Daemon, error) {
	if o.Source == nil || o.Runner == nil {
		return nil, errors.New("hostd: a source and a runner are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Rescan, DefaultRescan)
	def(&o.Recheck, DefaultRecheck)
	def(&o.BackoffMin, DefaultBackoffMin)
	def(&o.BackoffMax, DefaultBackoffMax)
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	return &Daemon{o: o, workers: map[string]*worker{}, noChannel: map[string]time.Time{}}, nil
}

// Run serves until ctx is done, then closes every connection and waits for
// the guests' goroutines (a command still running is killed with them).
func (d *Daemon) Run(ctx context.Context) error {
	defer d.stopAll()
	t := time.NewTicker(d.o.Rescan)
	defer t.Stop()
	for {
		if err := d.scan(ctx); err != nil && ctx.Err() == nil {
			d.o.Logger.Warn("listing guests failed; trying again", "error", err, "in", d.o.Rescan)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Serving returns the guests being served and their sockets.
func (d *Daemon) Serving() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]string, len(d.workers))
	for name, w := range d.workers {
		out[name] = w.socket
	}
	return out
}

// nameLister is a source that lists running guests cheaply, without their
// channels (virsh list --name): the channels are then read only for new
// guests and, every Recheck, for those that had none.
type nameLister interface {
	Names(ctx context.Context) ([]string, error)
}

func (d *Daemon) scan(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.o.Rescan*5)
	defer cancel()
	found, err := d.listGuests(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, w := range d.workers {
		if sock, ok := found[name]; !ok || sock != w.socket {
			d.o.Logger.Info("guest gone; dropping its channel", "guest", name)
			w.cancel()
			delete(d.workers, name)
		}
	}
	for name, sock := range found {
		if sock == "" {
			continue
		}
		if _, ok := d.workers[name]; ok {
			continue
		}
		wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
		w := &worker{socket: sock, cancel: wcancel, done: make(chan struct{})}
		d.workers[name] = w
		d.o.Logger.Info("serving guest", "guest", name, "socket", sock)
		go d.serveGuest(wctx, name, w)
	}
	return nil
}

// listGuests maps each running guest to its channel socket ("" without
// the channel).
func (d *Daemon) listGuests(ctx context.Context) (map[string]string, error) {
	found := map[string]string{}
	nl, ok := d.o.Source.(nameLister)
	if !ok {
		guests, err := d.o.Source.Guests(ctx, negotiator.GuestToHostChannel)
		if err != nil {
			return nil, err
		}
		for _, g := range guests {
			found[g.Name] = g.Socket
		}
		return found, nil
	}
	names, err := nl.Names(ctx)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	known := make(map[string]string, len(d.workers))
	for name, w := range d.workers {
		known[name] = w.socket
	}
	d.mu.Unlock()
	now := time.Now()
	live := map[string]bool{}
	for _, name := range names {
		live[name] = true
		if sock, ok := known[name]; ok {
			found[name] = sock
			continue
		}
		if last, ok := d.noChannel[name]; ok && now.Sub(last) < d.o.Recheck {
			found[name] = ""
			continue
		}
		g, err := d.o.Source.Find(ctx, name, negotiator.GuestToHostChannel)
		switch {
		case err == nil:
			delete(d.noChannel, name)
			found[name] = g.Socket
		case errors.Is(err, domains.ErrNoChannel):
			d.noChannel[name] = now
			found[name] = ""
		case errors.Is(err, domains.ErrNotFound):
		default:
			d.o.Logger.Debug("reading a guest failed", "guest", name, "error", err)
		}
	}
	for name := range d.noChannel {
		if !live[name] {
			delete(d.noChannel, name)
		}
	}
	return found, nil
}

// serveGuest keeps one guest's channel connected and served, reconnecting
// with backoff, until ctx is done.
func (d *Daemon) serveGuest(ctx context.Context, name string, w *worker) {
	defer close(w.done)
	log := d.o.Logger.With("guest", name)
	svc := negotiator.RunnerService{Runner: d.o.Runner, Env: []string{"NEGOTIATOR_GUEST=" + name}}
	delay := d.o.BackoffMin
	for ctx.Err() == nil {
		var dialer net.Dialer
		conn, err := dialer.DialContext(ctx, "unix", w.socket)
		if err == nil {
			log.Debug("connected", "socket", w.socket)
			start := time.Now()
			err = negotiator.Serve(ctx, conn, svc, d.o.Serve)
			conn.Close()
			if time.Since(start) > d.o.BackoffMax {
				delay = d.o.BackoffMin // it worked for a while: not a flapping guest
			}
			if err == nil {
				err = errors.New("the guest's channel closed")
			}
		}
		if ctx.Err() != nil {
			return
		}
		log.Debug("channel down; reconnecting", "error", err, "in", delay)
		// Jitter spreads the reconnects of many guests after a common cause.
		wait := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		delay = min(delay*2, d.o.BackoffMax)
	}
}

func (d *Daemon) stopAll() {
	d.mu.Lock()
	ws := make([]*worker, 0, len(d.workers))
	for name, w := range d.workers {
		w.cancel()
		ws = append(ws, w)
		delete(d.workers, name)
	}
	d.mu.Unlock()
	for _, w := range ws {
		<-w.done
	}
}

// String describes the options for the start-up log line.
func (o Options) String() string {
	return fmt.Sprintf("rescan=%s recheck=%s backoff=%s..%s command_timeout=%s", o.Rescan, o.Recheck, o.BackoffMin, o.BackoffMax, o.Runner.Timeout)
}
