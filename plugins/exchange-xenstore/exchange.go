package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/hashicorp/go-hclog"
)

// methodXenstore is the channel method, as in `guest-agent -m xenstore`.
const methodXenstore = "xenstore"

// Defaults of the reconnect back-off; Exchange fields override them.
const (
	defaultMinBackoff = 50 * time.Millisecond
	defaultMaxBackoff = 5 * time.Second
)

// handoverWait bounds how long Open waits for the previous instance of the
// same channel (cancelled just before a reopen) to stop. Correctness does not
// depend on it (answers are conditional, see server.go); it only avoids
// running a command twice.
const handoverWait = 5 * time.Second

// Exchange implements sdk.Exchange for the "xenstore" method. The zero value
// is ready to use.
type Exchange struct {
	// MinBackoff and MaxBackoff bound the pause between reconnect attempts
	// after xenstored went away; zero means the defaults.
	MinBackoff, MaxBackoff time.Duration

	mu     sync.Mutex
	active map[string]chan struct{} // channel name → closed when its instance stopped
}

var _ sdk.Exchange = (*Exchange)(nil)

// options are the channel's options (HCL `options = {...}` of the channel).
type options struct {
	// Domid, when set, serves that domain's keys: the base path comes from
	// GET_DOMAIN_PATH. Unset, paths stay relative and xenstored resolves
	// them under the connection's own domain (the guest's home through
	// /dev/xen/xenbus, /local/domain/0 on dom0's socket).
	Domid sdk.FlexString `json:"domid"`
	// RequestPath and ResponsePath are nova-agent's request_path and
	// response_path; relative paths are under the domain's home.
	RequestPath  string `json:"request_path"`
	ResponsePath string `json:"response_path"`
	// RetryPath keeps trying in the background when xenstored cannot be
	// reached at start instead of failing the channel (qemu-ga's -r).
	RetryPath bool `json:"retry_path"`
	// LogRequests logs every request and answer (ids only). Off by default:
	// each log line of a plugin costs about as much as a XenStore round
	// trip, because plugins log everything to the supervisor whatever its
	// level.
	LogRequests bool `json:"log_requests"`
}

var knownOptions = []string{"domid", "request_path", "response_path", "retry_path", "log_requests"}

func decodeOptions(ch sdk.Channel) (options, error) {
	o := options{RequestPath: "data/host", ResponsePath: "data/guest"}
	if err := ch.DecodeOptions(&o); err != nil {
		return o, err
	}
	if len(ch.Options) > 0 && string(ch.Options) != "null" {
		var all map[string]json.RawMessage
		if err := json.Unmarshal(ch.Options, &all); err != nil {
			return o, fmt.Errorf("channel %s options: %w", ch.Name, err)
		}
		var unknown []string
		for k := range all {
			known := false
			for _, kk := range knownOptions {
				known = known || k == kk
			}
			if !known {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			// A typo must not pass silently, but the supervisor may hand
			// every channel generic options.
			ch.Logger.Warn("ignoring unknown channel options", "options", unknown, "known", knownOptions)
		}
	}
	o.RequestPath = strings.TrimRight(o.RequestPath, "/")
	o.ResponsePath = strings.TrimRight(o.ResponsePath, "/")
	if o.RequestPath == "" || o.ResponsePath == "" {
		return o, fmt.Errorf("channel %s: request_path and response_path must not be empty", ch.Name)
	}
	if o.RequestPath == o.ResponsePath {
		return o, fmt.Errorf("channel %s: request_path and response_path are both %q", ch.Name, o.RequestPath)
	}
	if o.Domid != "" {
		if _, err := strconv.ParseUint(string(o.Domid), 10, 16); err != nil {
			return o, fmt.Errorf("channel %s: domid %q is not a domain id", ch.Name, o.Domid)
		}
	}
	return o, nil
}

// Open connects to xenstored, hands a message session to the parser and
// serves requests in the background until ctx ends.
func (e *Exchange) Open(ctx context.Context, ch sdk.Channel, out *session.Outbox) (string, error) {
	if ch.Logger == nil {
		ch.Logger = hclog.NewNullLogger()
	}
	if ch.Method != methodXenstore {
		return "", fmt.Errorf("exchange-xenstore: unknown method %q", ch.Method)
	}
	opts, err := decodeOptions(ch)
	if err != nil {
		return "", err
	}
	release := e.claim(ctx, ch.Name, ch.Logger)

	s := newServer(ch, opts, e.backoff())
	first, resolved, err := s.dial(ctx)
	if err != nil && !opts.RetryPath {
		release()
		return "", err
	}
	if err != nil {
		ch.Logger.Warn("xenstore not reachable yet; retrying in the background", "error", err)
		resolved = ch.Path
		if resolved == "" {
			resolved = strings.Join(xenstore.DefaultPaths(), "|")
		}
	}

	mc, remote, err := session.NewMessagePair()
	if err != nil {
		if first != nil {
			first.Close()
		}
		release()
		return "", fmt.Errorf("exchange-xenstore: %w", err)
	}
	ev := session.Event{
		Type: session.EventHandoff, Channel: ch.Name, Session: "xenstore",
		Kind: session.KindMessages, Origin: "xenstore:" + resolved,
	}
	err = out.Send(ev, remote)
	remote.Close() // the parser has its own copy now
	if err != nil {
		mc.Close()
		if first != nil {
			first.Close()
		}
		release()
		return "", fmt.Errorf("exchange-xenstore: hand the session to the parser: %w", err)
	}
	s.mc = mc
	go func() {
		defer release()
		s.run(ctx, first)
	}()
	ch.Logger.Info("serving nova requests from xenstore", "path", resolved,
		"requests", opts.RequestPath, "responses", opts.ResponsePath, "domid", string(opts.Domid))
	return resolved, nil
}

func (e *Exchange) backoff() [2]time.Duration {
	b := [2]time.Duration{e.MinBackoff, e.MaxBackoff}
	if b[0] <= 0 {
		b[0] = defaultMinBackoff
	}
	if b[1] < b[0] {
		b[1] = max(defaultMaxBackoff, b[0])
	}
	return b
}

// claim registers the instance serving channel name, first waiting (a
// bounded time) for the previous one to stop. The returned function marks
// this instance stopped.
func (e *Exchange) claim(ctx context.Context, name string, log hclog.Logger) func() {
	deadline := time.NewTimer(handoverWait)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		if e.active == nil {
			e.active = map[string]chan struct{}{}
		}
		prev, busy := e.active[name]
		if !busy {
			done := make(chan struct{})
			e.active[name] = done
			e.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					e.mu.Lock()
					if e.active[name] == done {
						delete(e.active, name)
					}
					e.mu.Unlock()
					close(done)
				})
			}
		}
		e.mu.Unlock()
		select {
		case <-prev:
		case <-deadline.C:
			// Safe anyway: an answer is only written together with the
			// removal of its request.
			log.Warn("previous instance of the channel is still stopping; starting anyway")
			e.mu.Lock()
			if e.active[name] == prev {
				delete(e.active, name)
			}
			e.mu.Unlock()
		case <-ctx.Done():
			return func() {}
		}
	}
}

// isConnErr reports whether err means the connection is gone (rather than
// xenstored refusing one operation).
func isConnErr(err error) bool {
	return errors.Is(err, xenstore.ErrDisconnected) || errors.Is(err, xenstore.ErrClosed) ||
		errors.Is(err, os.ErrClosed) || errors.Is(err, context.Canceled)
}
