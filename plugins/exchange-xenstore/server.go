package main

// How a request is answered exactly once.
//
// A request lives at <request_path>/<id> until it is answered. The answer is
// written by one XenStore transaction that reads the request key, removes it
// and writes <response_path>/<id>; if the request key is already gone, the
// transaction writes nothing. So "the request key disappears" and "the
// answer appears" are one atomic step that can happen only once per request,
// whatever else goes wrong:
//
//   - Requests waiting at start-up, or written while xenstored or the agent
//     was restarting, are still under request_path: the scan that follows
//     every (re)connect (the WATCH's first event) serves them.
//   - A request being served is remembered in the in-flight set, from before
//     its key is read until its answer is committed; watch events and rescans
//     skip it, so the command runs once.
//   - When the connection breaks during the commit, the transaction may or
//     may not have been applied. The answer is kept and the same conditional
//     transaction is retried on the next connection: if it had been applied,
//     the request key is gone and nothing more is written.
//   - When a second instance of the channel overlaps the first (a reopen
//     after a parser restart), both may run the command, but only the first
//     commit writes an answer.
//   - A request the host withdrew (its 30 s timeout removes data/host/<id>)
//     gets no answer, as nobody waits for it; neither does one lost with a
//     non-persistent xenstored.
//
// nova-agent removes the request and then writes the answer without a
// transaction, which loses the answer if it dies in between; writing the
// answer first would answer twice. When transactions keep conflicting (more
// than xenstore.MaxTransactionAttempts times) this code falls back to
// nova-agent's order.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/hashicorp/go-hclog"
)

// maxBatch bounds the answers committed in one transaction: oxenstored
// limits the operations of a transaction, and a big one conflicts more often
// with the host's writes.
const maxBatch = 16

// watchToken names the exchange's watch in xenstored's logs.
const watchToken = "guest-agent-nova"

// answer is a reply from the parser waiting to be committed.
type answer struct {
	id    uint64
	name  string
	value []byte
}

// conn is one connection to xenstored with the paths resolved for it.
type conn struct {
	c       *xenstore.Client
	reqDir  string
	respDir string
}

// server serves one channel: it owns the XenStore connection (replaced
// after each reconnect) and the message session with the parser.
type server struct {
	ch      sdk.Channel
	log     hclog.Logger
	opts    options
	backoff [2]time.Duration
	mc      *session.MessageConn

	mu       sync.Mutex
	cur      *conn             // nil while disconnected
	inflight map[string]uint64 // request id → message id (0 while its key is being read)
	byID     map[uint64]string // message id → request id
	nextID   uint64
	answers  []answer
	wake     chan struct{} // capacity 1: answers queued or connection changed
}

func newServer(ch sdk.Channel, opts options, backoff [2]time.Duration) *server {
	return &server{
		ch:       ch,
		log:      ch.Logger,
		opts:     opts,
		backoff:  backoff,
		inflight: make(map[string]uint64),
		byID:     make(map[uint64]string),
		wake:     make(chan struct{}, 1),
	}
}

func (s *server) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// dial connects once to ch.Path, or to the first default transport.
func (s *server) dial(ctx context.Context) (*xenstore.Client, string, error) {
	if s.ch.Path != "" {
		c, err := xenstore.Dial(ctx, s.ch.Path)
		if err != nil {
			return nil, "", fmt.Errorf("exchange-xenstore: %w", err)
		}
		return c, s.ch.Path, nil
	}
	var errs []error
	for _, p := range xenstore.DefaultPaths() {
		c, err := xenstore.Dial(ctx, p)
		if err == nil {
			return c, p, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, "", fmt.Errorf("exchange-xenstore: no usable xenstore transport: %w", errors.Join(errs...))
}

// run serves until ctx ends, reconnecting whenever the connection breaks.
func (s *server) run(ctx context.Context, first *xenstore.Client) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.readReplies(ctx) }()
	go func() { defer wg.Done(); s.writeAnswers(ctx) }()
	defer func() {
		s.mc.Close() // ends readReplies; the parser sees the session end
		wg.Wait()
	}()

	c := first
	delay := s.backoff[0]
	for ctx.Err() == nil {
		if c == nil {
			var err error
			c, _, err = s.dial(ctx)
			if err != nil {
				s.log.Debug("xenstore not reachable", "error", err, "retry_in", delay)
				if !sdk.Sleep(ctx, delay) {
					return
				}
				delay = min(delay*2, s.backoff[1])
				continue
			}
		}
		served, err := s.serveConn(ctx, c)
		_ = c.Close()
		c = nil
		s.setConn(nil)
		if ctx.Err() != nil {
			return
		}
		if served {
			delay = s.backoff[0]
		}
		s.log.Warn("xenstore connection lost; reconnecting", "error", err, "retry_in", delay)
		if !sdk.Sleep(ctx, delay) {
			return
		}
		delay = min(delay*2, s.backoff[1])
	}
}

func (s *server) setConn(c *conn) {
	s.mu.Lock()
	s.cur = c
	s.mu.Unlock()
	s.signal()
}

// resolve returns the request and response directories for c.
func (s *server) resolve(ctx context.Context, c *xenstore.Client) (string, string, error) {
	req, resp := s.opts.RequestPath, s.opts.ResponsePath
	if s.opts.Domid == "" {
		return req, resp, nil
	}
	home, err := c.GetDomainPath(ctx, string(s.opts.Domid))
	if err != nil {
		return "", "", err
	}
	if !strings.HasPrefix(req, "/") {
		req = home + "/" + req
	}
	if !strings.HasPrefix(resp, "/") {
		resp = home + "/" + resp
	}
	return req, resp, nil
}

// serveConn serves requests on one connection until it breaks or ctx ends.
// served reports whether the watch was established, which resets the
// reconnect back-off.
func (s *server) serveConn(ctx context.Context, c *xenstore.Client) (served bool, err error) {
	reqDir, respDir, err := s.resolve(ctx, c)
	if err != nil {
		return false, err
	}
	// nova-agent creates the request directory too: the host's toolstack
	// may not have.
	if err := c.Mkdir(ctx, reqDir); err != nil {
		return false, err
	}
	w, err := c.Watch(ctx, reqDir, watchToken)
	if err != nil {
		return false, err
	}
	cn := &conn{c: c, reqDir: reqDir, respDir: respDir}
	s.setConn(cn)
	s.log.Debug("watching for requests", "path", reqDir)
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				return true, w.Err()
			}
			name, whole := requestName(reqDir, ev.Path)
			switch {
			case whole:
				// The first event after WATCH, or the directory itself
				// changed (removed, recreated): look at everything.
				s.scan(ctx, cn)
			case name != "":
				s.consider(ctx, cn, name)
			}
		case <-ctx.Done():
			return true, ctx.Err()
		}
	}
}

// requestName maps a watch event path to the request id it concerns, or
// reports that it concerns the whole request directory.
func requestName(reqDir, path string) (name string, whole bool) {
	if path == reqDir {
		return "", true
	}
	rest, ok := strings.CutPrefix(path, reqDir+"/")
	if !ok {
		// A xenstored that reports relative watches with absolute paths.
		dir := "/" + strings.TrimPrefix(reqDir, "/")
		i := strings.Index(path, dir+"/")
		if i < 0 {
			if strings.HasSuffix(path, dir) {
				return "", true
			}
			return "", false
		}
		rest = path[i+len(dir)+1:]
	}
	name, _, _ = strings.Cut(rest, "/")
	return name, false
}

// scan serves every request present in the request directory.
func (s *server) scan(ctx context.Context, cn *conn) {
	names, err := cn.c.Directory(ctx, cn.reqDir)
	if errors.Is(err, xenstore.ErrNotFound) {
		// Removed under us: recreate it; the watch fires again.
		if err := cn.c.Mkdir(ctx, cn.reqDir); err != nil && !isConnErr(err) {
			s.log.Error("cannot recreate the request directory", "path", cn.reqDir, "error", err)
		}
		return
	}
	if err != nil {
		if !isConnErr(err) {
			s.log.Error("cannot list requests", "path", cn.reqDir, "error", err)
		}
		return
	}
	for _, name := range names {
		s.consider(ctx, cn, name)
	}
}

// consider reads request name and hands it to the parser, unless it is
// already being served.
func (s *server) consider(ctx context.Context, cn *conn, name string) {
	s.mu.Lock()
	if _, busy := s.inflight[name]; busy {
		s.mu.Unlock()
		return
	}
	// Marked before the read: an event arriving meanwhile must not start a
	// second read of the same request.
	s.inflight[name] = 0
	s.mu.Unlock()

	value, err := cn.c.Read(ctx, cn.reqDir+"/"+name)
	if err != nil || len(value) == 0 {
		s.mu.Lock()
		delete(s.inflight, name)
		s.mu.Unlock()
		switch {
		case err == nil:
			// A node created before its value is written; the write fires
			// the watch again.
			s.log.Debug("empty request key; waiting for its value", "id", name)
		case errors.Is(err, xenstore.ErrNotFound), isConnErr(err):
			// Answered, withdrawn, or the connection broke: the rescan
			// after reconnecting takes care of it.
		default:
			s.log.Error("cannot read request", "id", name, "error", err)
		}
		return
	}

	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.inflight[name] = id
	s.byID[id] = name
	s.mu.Unlock()
	if s.opts.LogRequests {
		s.log.Info("request", "id", name, "bytes", len(value))
	}
	if err := s.mc.Write(id, value); err != nil {
		// The parser is gone; the SDK ends this channel and the next
		// instance serves the request.
		s.log.Warn("cannot hand the request to the parser", "id", name, "error", err)
		s.forget(id, name)
	}
}

func (s *server) forget(id uint64, name string) {
	s.mu.Lock()
	delete(s.byID, id)
	if s.inflight[name] == id {
		delete(s.inflight, name)
	}
	s.mu.Unlock()
}

// readReplies queues the parser's answers for writeAnswers.
func (s *server) readReplies(ctx context.Context) {
	for {
		id, payload, err := s.mc.Read()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("message session ended", "error", err)
			}
			return
		}
		s.mu.Lock()
		name, ok := s.byID[id]
		if ok {
			s.answers = append(s.answers, answer{id: id, name: name, value: append([]byte(nil), payload...)})
		}
		s.mu.Unlock()
		if !ok {
			s.log.Warn("answer for an unknown request dropped", "message_id", id)
			continue
		}
		s.signal()
	}
}

// writeAnswers commits queued answers on the current connection, keeping
// them across reconnects.
func (s *server) writeAnswers(ctx context.Context) {
	for {
		s.mu.Lock()
		cn := s.cur
		var batch []answer
		if cn != nil && len(s.answers) > 0 {
			n := min(len(s.answers), maxBatch)
			batch = append(batch, s.answers[:n]...)
			s.answers = s.answers[n:]
		}
		s.mu.Unlock()
		if batch == nil {
			select {
			case <-s.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		if rest, err := s.commit(ctx, cn, batch); err != nil {
			if ctx.Err() != nil {
				return
			}
			// Connection lost: keep the answers (in order) for the next
			// connection, whose transaction finds out whether this one
			// was applied.
			s.mu.Lock()
			s.answers = append(rest, s.answers...)
			if s.cur == cn {
				s.cur = nil
			}
			s.mu.Unlock()
			s.log.Debug("answers kept for the next connection", "count", len(rest), "error", err)
			continue
		}
	}
}

// commit writes a batch of answers. On a broken connection it returns the
// answers whose fate is unknown, to be retried on the next connection.
func (s *server) commit(ctx context.Context, cn *conn, batch []answer) ([]answer, error) {
	values := make([][]byte, len(batch))
	for i, a := range batch {
		values[i] = fitValue(cn.respDir+"/"+a.name, a.value)
	}
	written := make([]bool, len(batch))
	err := cn.c.Transaction(ctx, func(tx *xenstore.Tx) error {
		// Every request key is read first: only those still present are
		// answered. The reads, then the removals and writes, go out
		// together, so a batch costs four round trips whatever its size.
		present := make([]bool, len(batch))
		if err := parallel(len(batch), func(i int) error {
			_, err := tx.Read(ctx, cn.reqDir+"/"+batch[i].name)
			if errors.Is(err, xenstore.ErrNotFound) {
				return nil // answered before, or withdrawn by the host
			}
			present[i] = err == nil
			return err
		}); err != nil {
			return err
		}
		var ops []func() error
		for i, a := range batch {
			written[i] = present[i]
			if !present[i] {
				continue
			}
			ops = append(ops,
				func() error { return tx.Rm(ctx, cn.reqDir+"/"+a.name) },
				func() error { return tx.Write(ctx, cn.respDir+"/"+a.name, values[i]) })
		}
		return parallel(len(ops), func(i int) error { return ops[i]() })
	})
	done := batch
	var rest []answer
	switch {
	case err == nil:
	case isConnErr(err):
		return batch, err
	default:
		// Conflicts beyond the retry budget, or xenstored refusing the
		// transaction (quota): answer one by one without one.
		s.log.Warn("answer transaction failed; answering without a transaction", "error", err, "count", len(batch))
		for i, a := range batch {
			ok, err := s.commitOne(ctx, cn, a, values[i])
			if isConnErr(err) {
				done, rest = batch[:i], batch[i:]
				break
			}
			if err != nil {
				s.log.Error("cannot write the answer", "id", a.name, "error", err)
			}
			written[i] = ok
		}
	}
	for i, a := range done {
		if written[i] {
			if s.opts.LogRequests {
				s.log.Info("answered", "id", a.name)
			}
		} else {
			s.log.Info("request key gone: answered before (a commit whose reply was lost) or withdrawn by the host; nothing written", "id", a.name)
		}
		s.forget(a.id, a.name)
	}
	if rest != nil {
		return rest, xenstore.ErrDisconnected
	}
	return nil, nil
}

// parallel runs fn(0..n-1) concurrently and returns the first error. The
// client multiplexes the requests on its connection.
func parallel(n int, fn func(i int) error) error {
	if n == 1 {
		return fn(0)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// commitOne answers one request in nova-agent's order: remove the request,
// then write the answer, so that a failure in between never answers twice.
func (s *server) commitOne(ctx context.Context, cn *conn, a answer, value []byte) (bool, error) {
	req := cn.reqDir + "/" + a.name
	if _, err := cn.c.Read(ctx, req); errors.Is(err, xenstore.ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if err := cn.c.Rm(ctx, req); err != nil {
		return false, err
	}
	if err := cn.c.Write(ctx, cn.respDir+"/"+a.name, value); err != nil {
		return false, err
	}
	return true, nil
}

// fitValue returns value, or a nova error answer when path and value do not
// fit in one XenStore message (4096 bytes).
func fitValue(path string, value []byte) []byte {
	if len(path)+1+len(value) <= xenstore.PayloadMax {
		return value
	}
	b, _ := json.Marshal(map[string]string{
		"returncode": "500",
		"message":    fmt.Sprintf("response of %d bytes does not fit in a XenStore value (%d bytes)", len(value), xenstore.PayloadMax-len(path)-1),
	})
	return b
}
