package xenstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Event is one WATCH_EVENT: Path is the node that changed (a child of the
// watched path, or the watched path itself), Token the watch's token.
type Event struct {
	Path  string
	Token string
}

// Watch is a registered XenStore watch. Its events arrive on Events until
// Unwatch is called or the connection ends.
//
// Delivery never blocks the connection's reader: events wait in a queue
// until received. An event whose path is already waiting in the queue is
// dropped, because an event carries nothing but the path and the receiver
// has to read the node anyway; this bounds the queue by the number of
// distinct paths. An event that arrives while its path is being handed over
// is kept, so a change is never lost.
type Watch struct {
	c     *Client
	path  string
	token string

	ch      chan Event
	wake    chan struct{} // capacity 1: "the queue is not empty"
	stopped chan struct{}

	mu        sync.Mutex
	queue     []Event
	queued    map[string]bool // paths in queue
	err       error           // why the watch stopped
	isStopped bool
	unwatched bool
}

// Watch registers a watch on path (or a special path such as
// "@releaseDomain") under token. An empty token picks a unique one. As
// xenstored does for every new watch, the first event fires at once with
// Path equal to path.
//
// Tokens route events, so a token can be in use by only one watch of a
// Client at a time.
func (c *Client) Watch(ctx context.Context, path, token string) (*Watch, error) {
	if err := checkPath(OpWatch, path); err != nil {
		return nil, err
	}
	if strings.IndexByte(token, 0) >= 0 {
		return nil, fmt.Errorf("xenstore: WATCH %s: token %q: %w", path, token, ErrInvalid)
	}
	w := &Watch{
		c:       c,
		path:    path,
		ch:      make(chan Event),
		wake:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
		queued:  make(map[string]bool),
	}
	// Registered before WATCH is sent: the first event may precede the reply.
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	if token == "" {
		c.tokenSeq++
		token = fmt.Sprintf("go-xenstore-%d", c.tokenSeq)
	}
	if _, busy := c.watches[token]; busy {
		c.mu.Unlock()
		return nil, fmt.Errorf("xenstore: WATCH %s: token %q already in use: %w", path, token, ErrExist)
	}
	w.token = token
	c.watches[token] = w
	c.mu.Unlock()
	go w.pump()

	_, err := c.request(ctx, OpWatch, 0, JoinStrings(path, token), path)
	if err != nil {
		c.forget(w)
		w.stop(err)
		if ctx.Err() != nil {
			// xenstored may have registered it after all; undo that quietly.
			go func() {
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				_, _ = c.request(uctx, OpUnwatch, 0, JoinStrings(path, token), path)
			}()
		}
		return nil, err
	}
	return w, nil
}

// Path returns the watched path as given to Watch.
func (w *Watch) Path() string { return w.path }

// Token returns the watch's token.
func (w *Watch) Token() string { return w.token }

// Events returns the channel of events. It is closed after Unwatch or when
// the connection ends; Err tells which.
func (w *Watch) Events() <-chan Event { return w.ch }

// Err returns nil while the watch runs or after Unwatch, and the client's
// error (ErrClosed, or one wrapping ErrDisconnected) if the connection
// ended it.
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Unwatch removes the watch from xenstored and closes the Events channel.
// Events still queued are dropped. Calling it again, or after the
// connection ended, does nothing.
func (w *Watch) Unwatch(ctx context.Context) error {
	w.mu.Lock()
	already := w.unwatched || w.isStopped
	w.unwatched = true
	w.mu.Unlock()
	if already {
		return nil
	}
	// Forget locally first so that no event is routed to a closed channel.
	w.c.forget(w)
	w.stop(nil)
	_, err := w.c.request(ctx, OpUnwatch, 0, JoinStrings(w.path, w.token), w.path)
	if errors.Is(err, ErrClosed) || errors.Is(err, ErrDisconnected) {
		// The watch died with the connection.
		return nil
	}
	return err
}

func (c *Client) forget(w *Watch) {
	c.mu.Lock()
	if c.watches[w.token] == w {
		delete(c.watches, w.token)
	}
	c.mu.Unlock()
}

func (c *Client) dispatchEvent(m Message) {
	s := SplitStrings(m.Payload)
	if len(s) < 2 {
		// Malformed, but not worth killing the connection over.
		return
	}
	ev := Event{Path: s[0], Token: s[1]}
	c.mu.Lock()
	w := c.watches[ev.Token]
	c.mu.Unlock()
	if w != nil {
		w.push(ev)
	}
}

func (w *Watch) push(ev Event) {
	w.mu.Lock()
	if w.isStopped || w.queued[ev.Path] {
		w.mu.Unlock()
		return
	}
	w.queue = append(w.queue, ev)
	w.queued[ev.Path] = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *Watch) stop(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.isStopped {
		return
	}
	w.isStopped = true
	w.err = err
	w.queue, w.queued = nil, nil
	close(w.stopped)
}

// pump hands queued events to the unbuffered channel; it is the only sender
// and closes the channel when the watch stops.
func (w *Watch) pump() {
	defer close(w.ch)
	for {
		w.mu.Lock()
		if w.isStopped {
			w.mu.Unlock()
			return
		}
		if len(w.queue) == 0 {
			w.mu.Unlock()
			select {
			case <-w.wake:
				continue
			case <-w.stopped:
				return
			}
		}
		// Dequeued before the hand-over: a change arriving meanwhile is
		// queued afresh instead of being merged into an event already seen.
		ev := w.queue[0]
		w.queue = w.queue[1:]
		delete(w.queued, ev.Path)
		w.mu.Unlock()
		select {
		case w.ch <- ev:
		case <-w.stopped:
			return
		}
	}
}
