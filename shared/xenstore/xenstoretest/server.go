// Package xenstoretest provides an in-memory XenStore server speaking the
// xs_wire.h protocol on a unix socket, for tests of code that uses package
// xenstore, together with ways to inject faults: dropped connections,
// restarts, swallowed requests, forced errors.
//
// It follows xenstore.txt: a tree of nodes; READ, WRITE, MKDIR, RM,
// DIRECTORY and DIRECTORY_PART; WATCH and UNWATCH with an event on
// registration and on every change of the watched path or below it (and of
// the watched path itself when a parent is removed); transactions on a
// snapshot that fail with EAGAIN when anything else was committed meanwhile;
// GET_DOMAIN_PATH. Relative paths resolve under the home of the domain the
// connections pretend to be (dom0 unless WithDomID says otherwise).
// Permissions and quotas are not modelled.
package xenstoretest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/guest-agent/guest-agent/shared/xenstore"
)

// Action tells the server what to do with a request; the zero value handles
// it normally.
type Action struct {
	// Disconnect closes the sender's connection instead of answering.
	Disconnect bool
	// NoReply consumes the request and never answers it.
	NoReply bool
	// Error answers with XS_ERROR and this code (e.g. "EACCES") instead of
	// handling the request.
	Error string
}

// Hook inspects each request before the server handles it. It runs on the
// connection's goroutine without server locks held, so it may call Server
// methods, except Stop, Restart and Close, which wait for that goroutine.
// It may block to delay the request (and everything after it on that
// connection).
type Hook func(req xenstore.Message) Action

// Option configures a Server.
type Option func(*Server)

// WithDomID makes connections behave as domain domid: relative paths
// resolve under /local/domain/<domid>, as they do for a guest talking
// through /dev/xen/xenbus.
func WithDomID(domid int) Option {
	return func(s *Server) { s.domid = domid }
}

// Server is an in-memory xenstored. Create it with NewServer.
type Server struct {
	dir   string
	path  string
	domid int

	mu      sync.Mutex
	root    *node
	gen     uint64 // bumped by every committed change; transactions compare it
	nextTx  uint32
	txs     map[uint32]*transaction
	conns   map[*conn]struct{}
	ln      net.Listener
	hook    Hook
	closed  bool
	serving sync.WaitGroup
}

type transaction struct {
	owner    *conn
	root     *node
	startGen uint64
	changes  []change
}

// change is a modification that fires watches once it is visible.
type change struct {
	path    string
	removal bool
}

// NewServer starts a server on a unix socket in a fresh temporary directory
// and stops it when the test ends.
func NewServer(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	// Not tb.TempDir: its long names can overflow sun_path's 108 bytes.
	dir, err := os.MkdirTemp("", "xst")
	if err != nil {
		tb.Fatalf("xenstoretest: %v", err)
	}
	s := &Server{
		dir:   dir,
		path:  filepath.Join(dir, "socket"),
		root:  newNode(),
		txs:   make(map[uint32]*transaction),
		conns: make(map[*conn]struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	tb.Cleanup(s.Close)
	if err := s.Start(); err != nil {
		tb.Fatalf("xenstoretest: %v", err)
	}
	return s
}

// Path returns the socket path, for xenstore.Dial or XENSTORED_PATH.
func (s *Server) Path() string { return s.path }

// SetHook installs h (nil removes it).
func (s *Server) SetHook(h Hook) {
	s.mu.Lock()
	s.hook = h
	s.mu.Unlock()
}

// Start listens on Path again after Stop; the tree is kept, as across a
// xenstored live update. Open transactions were discarded by Stop.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("xenstoretest: server closed")
	}
	if s.ln != nil {
		return nil
	}
	_ = os.Remove(s.path)
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		return fmt.Errorf("xenstoretest: listen: %w", err)
	}
	s.ln = ln
	s.serving.Add(1)
	go s.accept(ln)
	return nil
}

// Stop closes the listener and every connection, like a xenstored that
// died: clients see their connection break and cannot connect until Start.
func (s *Server) Stop() {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	s.DropConnections()
	s.serving.Wait()
}

// Restart is Stop followed by Start.
func (s *Server) Restart() error {
	s.Stop()
	return s.Start()
}

// Close stops the server for good and removes its directory.
func (s *Server) Close() {
	s.Stop()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	_ = os.RemoveAll(s.dir)
}

// DropConnections closes every client connection, keeping the listener:
// clients can reconnect at once. Their watches and transactions are gone.
func (s *Server) DropConnections() {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Connections returns the number of open client connections.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// OpenTransactions returns the number of transactions started and not
// ended, over all connections.
func (s *Server) OpenTransactions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.txs)
}

// Watches returns the number of watches registered over all connections.
func (s *Server) Watches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		n += len(c.watches)
	}
	return n
}

// Read returns the value at an absolute path, bypassing the protocol.
func (s *Server) Read(path string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !validPath(path) {
		return nil, false
	}
	n := s.root.lookup(path)
	if n == nil {
		return nil, false
	}
	return append([]byte(nil), n.value...), true
}

// Write stores a value at an absolute path and fires watches, as if another
// client had written it.
func (s *Server) Write(path string, value []byte) error {
	if !validPath(path) {
		return fmt.Errorf("xenstoretest: write %q: %w", path, xenstore.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.root.write(path, value)
	s.commit(change{path: path})
	return nil
}

// Rm removes an absolute path and fires watches, as if another client had
// removed it.
func (s *Server) Rm(path string) error {
	if !validPath(path) {
		return fmt.Errorf("xenstoretest: rm %q: %w", path, xenstore.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	removed, err := s.root.rm(path)
	if err != nil {
		return fmt.Errorf("xenstoretest: rm %q: %w", path, err)
	}
	if removed {
		s.commit(change{path: path, removal: true})
	}
	return nil
}

// Directory lists the children of an absolute path, bypassing the protocol.
func (s *Server) Directory(path string) ([]string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !validPath(path) {
		return nil, false
	}
	n := s.root.lookup(path)
	if n == nil {
		return nil, false
	}
	return n.childNames(), true
}

// FireWatch sends a spurious event for path to every matching watch, which
// xenstore.txt allows xenstored to do at any time.
func (s *Server) FireWatch(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fire(change{path: path})
}

func (s *Server) accept(ln net.Listener) {
	defer s.serving.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		c := newConn(s, nc)
		s.mu.Lock()
		if s.ln != ln {
			s.mu.Unlock()
			_ = nc.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.serving.Add(2)
		go c.writeLoop()
		go c.readLoop()
	}
}

// commit makes a change visible: later transactions conflict with it and
// watches fire. s.mu must be held.
func (s *Server) commit(ch ...change) {
	s.gen++
	for _, c := range ch {
		s.fire(c)
	}
}

// fire queues WATCH_EVENTs for a change on every connection; s.mu must be
// held. Queuing (not writing) keeps a slow client from stalling the server,
// and events of a request are queued before its reply, as xenstored does.
func (s *Server) fire(ch change) {
	for c := range s.conns {
		for _, w := range c.watches {
			epath, ok := w.match(ch)
			if !ok {
				continue
			}
			if w.relative {
				epath = strings.TrimPrefix(epath, c.home()+"/")
			}
			c.queue(xenstore.Message{Type: xenstore.OpWatchEvent, Payload: xenstore.JoinStrings(epath, w.token)})
		}
	}
}

type watch struct {
	path     string // canonical
	token    string
	relative bool // registered with a relative path: events are relative too
}

// match applies xenstore.txt's rule: an event on a child of the watched
// path fires with its own path; removing a parent of the watched path fires
// with the watched path. Special @paths only match themselves.
func (w watch) match(ch change) (string, bool) {
	if strings.HasPrefix(ch.path, "@") || strings.HasPrefix(w.path, "@") {
		return ch.path, ch.path == w.path
	}
	if isChild(ch.path, w.path) {
		return ch.path, true
	}
	if ch.removal && isChild(w.path, ch.path) {
		return w.path, true
	}
	return "", false
}

// conn is one client connection with its outgoing queue.
type conn struct {
	s  *Server
	nc net.Conn

	watches []watch // guarded by s.mu

	qmu    sync.Mutex
	out    []xenstore.Message
	wake   chan struct{}
	done   chan struct{}
	closed bool
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{s: s, nc: nc, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (c *conn) home() string { return "/local/domain/" + strconv.Itoa(c.s.domid) }

func (c *conn) queue(m xenstore.Message) {
	c.qmu.Lock()
	if !c.closed {
		c.out = append(c.out, m)
	}
	c.qmu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *conn) close() {
	c.qmu.Lock()
	if c.closed {
		c.qmu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	c.qmu.Unlock()
	_ = c.nc.Close()

	s := c.s
	s.mu.Lock()
	delete(s.conns, c)
	for id, tx := range s.txs {
		if tx.owner == c {
			delete(s.txs, id)
		}
	}
	c.watches = nil
	s.mu.Unlock()
}

func (c *conn) writeLoop() {
	defer c.s.serving.Done()
	for {
		c.qmu.Lock()
		batch := c.out
		c.out = nil
		c.qmu.Unlock()
		for _, m := range batch {
			if err := xenstore.WriteMessage(c.nc, m); err != nil {
				c.close()
				return
			}
		}
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
	}
}

func (c *conn) readLoop() {
	defer c.s.serving.Done()
	defer c.close()
	for {
		// An oversized request fails here and the connection is closed,
		// which is what xenstored does.
		m, err := xenstore.ReadMessage(c.nc)
		if err != nil {
			return
		}
		c.s.mu.Lock()
		hook := c.s.hook
		c.s.mu.Unlock()
		var act Action
		if hook != nil {
			act = hook(m)
		}
		switch {
		case act.Disconnect:
			return
		case act.NoReply:
			continue
		case act.Error != "":
			c.queue(errorReply(m, act.Error))
			continue
		}
		c.s.mu.Lock()
		reply := c.handle(m)
		c.s.mu.Unlock()
		c.queue(reply)
		if m.Type == xenstore.OpWatch && reply.Type == xenstore.OpWatch {
			// A new watch fires once, after its reply.
			c.s.mu.Lock()
			c.fireInitial(m)
			c.s.mu.Unlock()
		}
	}
}

func errorReply(req xenstore.Message, code string) xenstore.Message {
	return xenstore.Message{Type: xenstore.OpError, ReqID: req.ReqID, TxID: req.TxID, Payload: xenstore.JoinStrings(code)}
}

func okReply(req xenstore.Message) xenstore.Message {
	return xenstore.Message{Type: req.Type, ReqID: req.ReqID, TxID: req.TxID, Payload: xenstore.JoinStrings("OK")}
}

// canon turns a request path into a canonical absolute one.
func (c *conn) canon(p string) (string, error) {
	if p != "" && p[0] != '/' {
		if len(p) > xenstore.RelPathMax {
			return "", xenstore.ErrInvalid
		}
		p = c.home() + "/" + p
	}
	if !validPath(p) {
		return "", xenstore.ErrInvalid
	}
	return p, nil
}

// args splits a "<foo>|*" payload and insists on n strings (more are
// tolerated: xenstore.txt reserves trailing ones).
func args(p []byte, n int) ([]string, error) {
	if len(p) == 0 || p[len(p)-1] != 0 {
		return nil, xenstore.ErrInvalid
	}
	s := xenstore.SplitStrings(p)
	if len(s) < n {
		return nil, xenstore.ErrInvalid
	}
	return s, nil
}

// handle answers one request; c.s.mu is held.
func (c *conn) handle(m xenstore.Message) xenstore.Message {
	reply, err := c.dispatch(m)
	if err != nil {
		return errorReply(m, xenstore.ErrorCode(err))
	}
	return reply
}

func (c *conn) dispatch(m xenstore.Message) (xenstore.Message, error) {
	s := c.s
	root := s.root
	var tx *transaction
	if m.TxID != 0 {
		switch m.Type {
		case xenstore.OpTransactionStart:
			return xenstore.Message{}, xenstore.ErrInvalid // xenstore.txt: not legal
		case xenstore.OpWatch, xenstore.OpUnwatch, xenstore.OpGetDomainPath:
			// tx_id is ignored for these.
		default:
			tx = s.txs[m.TxID]
			if tx == nil || tx.owner != c {
				return xenstore.Message{}, xenstore.ErrNotFound
			}
			root = tx.root
		}
	}
	// record makes a change visible now, or at commit inside a transaction.
	record := func(ch change) {
		if tx != nil {
			tx.changes = append(tx.changes, ch)
		} else {
			s.commit(ch)
		}
	}
	reply := func(payload []byte) xenstore.Message {
		return xenstore.Message{Type: m.Type, ReqID: m.ReqID, TxID: m.TxID, Payload: payload}
	}

	switch m.Type {
	case xenstore.OpRead:
		p, err := c.pathArg(m.Payload)
		if err != nil {
			return xenstore.Message{}, err
		}
		n := root.lookup(p)
		if n == nil {
			return xenstore.Message{}, xenstore.ErrNotFound
		}
		return reply(append([]byte(nil), n.value...)), nil

	case xenstore.OpWrite:
		raw, value, ok := strings.Cut(string(m.Payload), "\x00")
		if !ok {
			return xenstore.Message{}, xenstore.ErrInvalid
		}
		p, err := c.canon(raw)
		if err != nil {
			return xenstore.Message{}, err
		}
		root.write(p, []byte(value))
		record(change{path: p})
		return okReply(m), nil

	case xenstore.OpMkdir:
		p, err := c.pathArg(m.Payload)
		if err != nil {
			return xenstore.Message{}, err
		}
		if root.mkdir(p) {
			record(change{path: p})
		}
		return okReply(m), nil

	case xenstore.OpRm:
		p, err := c.pathArg(m.Payload)
		if err != nil {
			return xenstore.Message{}, err
		}
		removed, err := root.rm(p)
		if err != nil {
			return xenstore.Message{}, err
		}
		if removed {
			record(change{path: p, removal: true})
		}
		return okReply(m), nil

	case xenstore.OpDirectory:
		p, err := c.pathArg(m.Payload)
		if err != nil {
			return xenstore.Message{}, err
		}
		n := root.lookup(p)
		if n == nil {
			return xenstore.Message{}, xenstore.ErrNotFound
		}
		list := xenstore.JoinStrings(n.childNames()...)
		if len(list) > xenstore.PayloadMax {
			return xenstore.Message{}, xenstore.ErrTooBig
		}
		return reply(list), nil

	case xenstore.OpDirectoryPart:
		return c.directoryPart(m, root, tx)

	case xenstore.OpWatch, xenstore.OpUnwatch:
		a, err := args(m.Payload, 2)
		if err != nil {
			return xenstore.Message{}, err
		}
		w := watch{path: a[0], token: a[1]}
		if !strings.HasPrefix(w.path, "@") {
			if w.path, err = c.canon(a[0]); err != nil {
				return xenstore.Message{}, err
			}
			w.relative = a[0][0] != '/'
		}
		i := c.findWatch(w)
		if m.Type == xenstore.OpUnwatch {
			if i < 0 {
				return xenstore.Message{}, xenstore.ErrNotFound
			}
			c.watches = append(c.watches[:i], c.watches[i+1:]...)
			return okReply(m), nil
		}
		if i >= 0 {
			return xenstore.Message{}, xenstore.ErrExist
		}
		c.watches = append(c.watches, w)
		return okReply(m), nil

	case xenstore.OpTransactionStart:
		s.nextTx++
		if s.nextTx == 0 {
			s.nextTx = 1
		}
		id := s.nextTx
		s.txs[id] = &transaction{owner: c, root: s.root.clone(), startGen: s.gen}
		return reply(xenstore.JoinStrings(strconv.FormatUint(uint64(id), 10))), nil

	case xenstore.OpTransactionEnd:
		if tx == nil {
			return xenstore.Message{}, xenstore.ErrNotFound
		}
		a, err := args(m.Payload, 1)
		if err != nil || (a[0] != "T" && a[0] != "F") {
			return xenstore.Message{}, xenstore.ErrInvalid
		}
		delete(s.txs, m.TxID)
		if a[0] == "F" {
			return okReply(m), nil
		}
		if s.gen != tx.startGen {
			return xenstore.Message{}, xenstore.ErrAgain
		}
		if len(tx.changes) > 0 {
			s.root = tx.root
			s.commit(tx.changes...)
		}
		return okReply(m), nil

	case xenstore.OpGetDomainPath:
		a, err := args(m.Payload, 1)
		if err != nil {
			return xenstore.Message{}, err
		}
		id, err := strconv.ParseUint(a[0], 10, 16)
		if err != nil {
			return xenstore.Message{}, xenstore.ErrInvalid
		}
		return reply(xenstore.JoinStrings("/local/domain/" + strconv.FormatUint(id, 10))), nil

	case xenstore.OpWatchEvent, xenstore.OpError:
		// Only xenstored sends these.
		return xenstore.Message{}, xenstore.ErrInvalid

	default:
		return xenstore.Message{}, xenstore.ErrNotSupp
	}
}

func (c *conn) pathArg(p []byte) (string, error) {
	a, err := args(p, 1)
	if err != nil {
		return "", err
	}
	return c.canon(a[0])
}

func (c *conn) findWatch(w watch) int {
	for i, x := range c.watches {
		if x.path == w.path && x.token == w.token {
			return i
		}
	}
	return -1
}

// fireInitial sends the event every new watch gets on registration, with
// the path as the client gave it; c.s.mu is held.
func (c *conn) fireInitial(m xenstore.Message) {
	a, err := args(m.Payload, 2)
	if err != nil {
		return
	}
	c.queue(xenstore.Message{Type: xenstore.OpWatchEvent, Payload: xenstore.JoinStrings(a[0], a[1])})
}

// directoryPart follows xenstored: "<gencnt>|" then as many whole children
// as fit from the byte offset asked for, plus a final extra NUL once the
// list is complete.
func (c *conn) directoryPart(m xenstore.Message, root *node, tx *transaction) (xenstore.Message, error) {
	a, err := args(m.Payload, 2)
	if err != nil {
		return xenstore.Message{}, err
	}
	p, err := c.canon(a[0])
	if err != nil {
		return xenstore.Message{}, err
	}
	off, err := strconv.Atoi(a[1])
	if err != nil || off < 0 {
		return xenstore.Message{}, xenstore.ErrInvalid
	}
	n := root.lookup(p)
	if n == nil {
		return xenstore.Message{}, xenstore.ErrNotFound
	}
	gen := c.s.gen
	if tx != nil {
		gen = tx.startGen
	}
	out := xenstore.JoinStrings(strconv.FormatUint(gen, 10))
	list := xenstore.JoinStrings(n.childNames()...)
	if off >= len(list) {
		out = append(out, 0)
		return xenstore.Message{Type: m.Type, ReqID: m.ReqID, TxID: m.TxID, Payload: out}, nil
	}
	room := xenstore.PayloadMax - len(out) - 1
	end := off
	for end < len(list) {
		next := end + strings.IndexByte(string(list[end:]), 0) + 1
		if next-off > room {
			break
		}
		end = next
	}
	out = append(out, list[off:end]...)
	if end == len(list) {
		out = append(out, 0)
	}
	return xenstore.Message{Type: m.Type, ReqID: m.ReqID, TxID: m.TxID, Payload: out}, nil
}
