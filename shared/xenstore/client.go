// Package xenstore is a XenStore client speaking the xs_wire.h protocol,
// either through the xenbus device of a Xen guest (/dev/xen/xenbus,
// /proc/xen/xenbus) or through xenstored's unix socket in dom0 and tests.
//
// A Client multiplexes concurrent calls over one connection: every request
// carries its own req_id and a single reader goroutine routes replies by
// req_id and watch events by token, so watch events may arrive at any point,
// including between a request and its reply. When the connection breaks, all
// pending and later calls fail with an error wrapping ErrDisconnected and
// every watch channel is closed; the user then Dials again and re-registers
// its watches (which fire once on registration, so nothing is missed).
package xenstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Well-known transports, in the order DialDefault tries them.
const (
	// DevicePath is the xenbus device of a Linux Xen guest.
	DevicePath = "/dev/xen/xenbus"
	// ProcPath is the older xenfs interface to the same thing.
	ProcPath = "/proc/xen/xenbus"
	// DefaultSocketPath is xenstored's socket in dom0, overridden by the
	// XENSTORED_PATH environment variable as in libxenstore.
	DefaultSocketPath = "/var/run/xenstored/socket"
)

// MaxReplyPayload is the largest reply the client accepts. It is above
// PayloadMax because oxenstored answers DIRECTORY on its unix socket with
// the whole list however long it is (checked with Xen 4.17), where C
// xenstored would say E2BIG; the bound only guards against garbage lengths.
const MaxReplyPayload = 1 << 20

// Client is a connection to xenstored. Its methods are safe for concurrent
// use.
type Client struct {
	conn io.ReadWriteCloser

	// wmu keeps each message in one uninterrupted write.
	wmu sync.Mutex

	mu       sync.Mutex
	nextID   uint32
	tokenSeq uint64
	pending  map[uint32]*call
	watches  map[string]*Watch // by token
	err      error             // set once, when closed or broken
	done     chan struct{}     // closed when err is set

	readerDone chan struct{}
}

type call struct {
	done  chan struct{}
	reply Message
	err   error
}

// Dial connects to xenstored at path. A unix socket is dialled; anything
// else (the xenbus character device, or the xenfs file /proc/xen/xenbus) is
// opened read-write.
func Dial(ctx context.Context, path string) (*Client, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("xenstore: dial: %w", err)
	}
	var conn io.ReadWriteCloser
	if fi.Mode()&os.ModeSocket != 0 {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, fmt.Errorf("xenstore: dial: %w", err)
		}
		conn = c
	} else {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("xenstore: dial: %w", err)
		}
		conn = f
	}
	return NewClient(conn), nil
}

// DefaultPaths lists the transports DialDefault tries, in order: the guest
// devices first, then $XENSTORED_PATH or DefaultSocketPath.
func DefaultPaths() []string {
	sock := os.Getenv("XENSTORED_PATH")
	if sock == "" {
		sock = DefaultSocketPath
	}
	return []string{DevicePath, ProcPath, sock}
}

// DialDefault connects through the first of DefaultPaths that exists and
// accepts the connection.
func DialDefault(ctx context.Context) (*Client, error) {
	var errs []error
	for _, p := range DefaultPaths() {
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, err)
			continue
		}
		c, err := Dial(ctx, p)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("xenstore: no usable transport: %w", errors.Join(errs...))
}

// NewClient runs the protocol over an established connection, which the
// Client owns from now on. Dial is the usual way to get one; NewClient is
// for transports Dial does not know.
func NewClient(conn io.ReadWriteCloser) *Client {
	c := &Client{
		conn:       conn,
		pending:    make(map[uint32]*call),
		watches:    make(map[string]*Watch),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	go c.reader()
	return c
}

// Close closes the connection. Pending calls fail with ErrClosed and watch
// channels are closed. Close waits for the reader goroutine to exit.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	<-c.readerDone
	return nil
}

// Done is closed when the client stops working, because of Close or because
// the connection broke; Err then tells which.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the client works, ErrClosed after Close, or an error
// wrapping ErrDisconnected once the connection broke.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// fail puts the client into its terminal state exactly once.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	pending, watches := c.pending, c.watches
	c.pending, c.watches = nil, nil
	close(c.done)
	c.mu.Unlock()

	// Closing unblocks the reader; its own error is ignored since c.err is set.
	_ = c.conn.Close()
	for _, cl := range pending {
		cl.err = err
		close(cl.done)
	}
	for _, w := range watches {
		w.stop(err)
	}
}

func (c *Client) reader() {
	defer close(c.readerDone)
	// One buffered read usually yields header and payload together.
	r := bufio.NewReaderSize(c.conn, HeaderSize+PayloadMax)
	for {
		m, err := ReadMessageMax(r, MaxReplyPayload)
		if err != nil {
			c.fail(fmt.Errorf("%w: %w", ErrDisconnected, err))
			return
		}
		if m.Type == OpWatchEvent {
			c.dispatchEvent(m)
			continue
		}
		c.mu.Lock()
		cl := c.pending[m.ReqID]
		delete(c.pending, m.ReqID)
		c.mu.Unlock()
		// A reply nobody waits for belongs to a call whose context ended.
		if cl != nil {
			cl.reply = m
			close(cl.done)
		}
	}
}

// send registers a call and writes its request. The call is registered
// before the write because the reply may be read before Write returns.
func (c *Client) send(op Op, tx uint32, payload []byte) (uint32, *call, error) {
	if len(payload) > PayloadMax {
		return 0, nil, fmt.Errorf("xenstore: %s request of %d bytes: %w", op, len(payload), ErrPayloadTooLarge)
	}
	cl := &call{done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, nil, err
	}
	id := c.allocID()
	c.pending[id] = cl
	c.mu.Unlock()

	c.wmu.Lock()
	err := WriteMessage(c.conn, Message{Type: op, ReqID: id, TxID: tx, Payload: payload})
	c.wmu.Unlock()
	if err != nil {
		// A failed write leaves the stream in an unknown state: give up on it.
		c.fail(fmt.Errorf("%w: %w", ErrDisconnected, err))
		return 0, nil, c.Err()
	}
	return id, cl, nil
}

// allocID returns an unused req_id; c.mu must be held. 0 is skipped so that
// it only ever appears in watch events.
func (c *Client) allocID() uint32 {
	for {
		c.nextID++
		if c.nextID == 0 {
			continue
		}
		if _, busy := c.pending[c.nextID]; !busy {
			return c.nextID
		}
	}
}

// request sends a request and waits for its reply. arg names the request in
// errors (usually its path).
func (c *Client) request(ctx context.Context, op Op, tx uint32, payload []byte, arg string) ([]byte, error) {
	id, cl, err := c.send(op, tx, payload)
	if err != nil {
		return nil, err
	}
	select {
	case <-cl.done:
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return nil, fmt.Errorf("xenstore: %s %s: %w", op, arg, ctx.Err())
	}
	return checkReply(op, arg, cl)
}

func checkReply(op Op, arg string, cl *call) ([]byte, error) {
	if cl.err != nil {
		return nil, cl.err
	}
	switch cl.reply.Type {
	case op:
		return cl.reply.Payload, nil
	case OpError:
		code := ""
		if s := SplitStrings(cl.reply.Payload); len(s) > 0 {
			code = s[0]
		}
		return nil, &Error{Op: op, Path: arg, Code: code}
	default:
		return nil, fmt.Errorf("%w: %s request answered with %s", ErrProtocol, op, cl.reply.Type)
	}
}

// checkPath rejects what cannot be framed; xenstored judges the rest.
func checkPath(op Op, path string) error {
	if path == "" || strings.IndexByte(path, 0) >= 0 {
		return fmt.Errorf("xenstore: %s %q: %w", op, path, ErrInvalid)
	}
	return nil
}

// The operations below are shared by Client (tx 0) and Tx.

func (c *Client) read(ctx context.Context, tx uint32, path string) ([]byte, error) {
	if err := checkPath(OpRead, path); err != nil {
		return nil, err
	}
	// The reply is the raw value, without a terminating NUL.
	return c.request(ctx, OpRead, tx, JoinStrings(path), path)
}

func (c *Client) write(ctx context.Context, tx uint32, path string, value []byte) error {
	if err := checkPath(OpWrite, path); err != nil {
		return err
	}
	// path NUL value, with no NUL after the value.
	p := make([]byte, 0, len(path)+1+len(value))
	p = append(append(append(p, path...), 0), value...)
	_, err := c.request(ctx, OpWrite, tx, p, path)
	return err
}

func (c *Client) simple(ctx context.Context, op Op, tx uint32, path string) error {
	if err := checkPath(op, path); err != nil {
		return err
	}
	_, err := c.request(ctx, op, tx, JoinStrings(path), path)
	return err
}

func (c *Client) directory(ctx context.Context, tx uint32, path string) ([]string, error) {
	if err := checkPath(OpDirectory, path); err != nil {
		return nil, err
	}
	p, err := c.request(ctx, OpDirectory, tx, JoinStrings(path), path)
	if errors.Is(err, ErrTooBig) {
		// The list does not fit in one reply: page through it.
		return c.directoryPart(ctx, tx, path)
	}
	if err != nil {
		return nil, err
	}
	return nonEmpty(SplitStrings(p)), nil
}

// directoryPart implements DIRECTORY_PART paging as libxenstore does: each
// reply is "<gencnt>|" plus children from the byte offset asked for, and the
// last one ends with an extra NUL. A changed gencnt means the node changed
// between pages, so the listing starts over.
func (c *Client) directoryPart(ctx context.Context, tx uint32, path string) ([]string, error) {
	const maxRestarts = 16
	var (
		gen  string
		list []byte
	)
	for restarts := 0; restarts < maxRestarts; {
		p, err := c.request(ctx, OpDirectoryPart, tx, JoinStrings(path, strconv.Itoa(len(list))), path)
		if err != nil {
			return nil, err
		}
		g, rest, ok := strings.Cut(string(p), "\x00")
		if !ok {
			return nil, fmt.Errorf("%w: DIRECTORY_PART reply without generation", ErrProtocol)
		}
		if len(list) == 0 {
			gen = g
		} else if g != gen {
			list, gen = nil, ""
			restarts++
			continue
		}
		list = append(list, rest...)
		if len(list) <= 1 || list[len(list)-2] == 0 {
			return nonEmpty(SplitStrings(list)), nil
		}
		if rest == "" {
			return nil, fmt.Errorf("%w: DIRECTORY_PART made no progress", ErrProtocol)
		}
	}
	return nil, fmt.Errorf("xenstore: DIRECTORY_PART %s: changed %d times while listing: %w", path, maxRestarts, ErrAgain)
}

func nonEmpty(s []string) []string {
	out := s[:0]
	for _, x := range s {
		if x != "" {
			out = append(out, x)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Read returns the value at path. A missing node gives an error matching
// ErrNotFound.
func (c *Client) Read(ctx context.Context, path string) ([]byte, error) {
	return c.read(ctx, 0, path)
}

// Write stores value at path, creating missing parents with empty values.
func (c *Client) Write(ctx context.Context, path string, value []byte) error {
	return c.write(ctx, 0, path, value)
}

// Mkdir makes sure path exists, creating it and its parents with empty
// values; existing values are left alone.
func (c *Client) Mkdir(ctx context.Context, path string) error {
	return c.simple(ctx, OpMkdir, 0, path)
}

// Rm removes path and everything below it. A missing path is not an error,
// but a missing parent is (ErrNotFound), as xenstored defines it.
func (c *Client) Rm(ctx context.Context, path string) error {
	return c.simple(ctx, OpRm, 0, path)
}

// Directory lists the names (not full paths) of path's children.
func (c *Client) Directory(ctx context.Context, path string) ([]string, error) {
	return c.directory(ctx, 0, path)
}

// GetDomainPath returns the home path of a domain, /local/domain/<domid>.
// Relative paths used by that domain are relative to it.
func (c *Client) GetDomainPath(ctx context.Context, domid string) (string, error) {
	if err := checkPath(OpGetDomainPath, domid); err != nil {
		return "", err
	}
	p, err := c.request(ctx, OpGetDomainPath, 0, JoinStrings(domid), domid)
	if err != nil {
		return "", err
	}
	s := SplitStrings(p)
	if len(s) == 0 || s[0] == "" {
		return "", fmt.Errorf("%w: empty GET_DOMAIN_PATH reply for %s", ErrProtocol, domid)
	}
	return s[0], nil
}
