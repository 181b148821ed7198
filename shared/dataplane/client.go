package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// ErrConnectionLost is returned for requests in flight when the command
// plugin goes away (crash, restart): the caller answers them with an error
// and redials for the next one.
var ErrConnectionLost = errors.New("the command plugin went away while running the command")

// ErrNotDelivered is returned when the connection was already gone before the
// request left: the plugin never saw it, so it is safe to send it again on a
// new connection.
var ErrNotDelivered = errors.New("the command plugin connection was closed before the request was sent")

type result struct {
	resp *pb.RunResponse
	err  error
}

// Client multiplexes requests to one command plugin over one connection.
type Client struct {
	conn net.Conn

	wmu      sync.Mutex
	wscratch []byte

	// pool holds the buffers of response blobs; see Release.
	pool BufferPool

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan result
	aheads  map[uint64]*Ahead // read-ahead runs, until settled and answered
	err     error
	done    chan struct{}
}

// Dial connects to the data plane socket of a command plugin.
func Dial(ctx context.Context, socket string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("dataplane: dial %s: %w", socket, err)
	}
	GrowSendBuffer(conn)
	c := &Client{conn: conn, pending: make(map[uint64]chan result), aheads: make(map[uint64]*Ahead), done: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

// Done is closed when the connection is lost.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close drops the connection; pending calls fail.
func (c *Client) Close() error {
	return c.conn.Close()
}

// Release recycles the blob of a response once the caller is done with it.
func (c *Client) Release(blob []byte) { c.pool.Put(blob) }

// Call sends req (its Id is assigned here) and waits for the response.
func (c *Client) Call(ctx context.Context, req *pb.RunRequest) (*pb.RunResponse, error) {
	ch := make(chan result, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %v", ErrNotDelivered, c.err)
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()

	req.Id = id
	if err := c.send(req); err != nil {
		// A unix socket refuses the write when the peer has exited, so
		// nothing of this request reached the plugin.
		c.conn.Close()
		c.forget(id)
		return nil, fmt.Errorf("%w: %v", ErrNotDelivered, err)
	}
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		c.forget(id)
		return nil, ctx.Err()
	}
}

// send writes one frame: req's header and its blob.
func (c *Client) send(req *pb.RunRequest) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sendLocked(req)
}

// sendLocked is send for a caller that holds c.wmu.
func (c *Client) sendLocked(req *pb.RunRequest) error {
	blob := req.Blob
	req.Blob = nil
	var err error
	c.wscratch, err = writeFrame(c.conn, req, [][]byte{blob}, c.wscratch)
	req.Blob = blob
	return err
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *Client) readLoop() {
	r := bufio.NewReaderSize(c.conn, 64<<10)
	var scratch []byte
	for {
		resp := &pb.RunResponse{}
		var blob []byte
		var err error
		scratch, blob, err = readFrame(r, resp, scratch, &c.pool)
		if err != nil {
			c.fail(fmt.Errorf("%w (%v)", ErrConnectionLost, err))
			return
		}
		resp.Blob = blob
		if resp.Id == 0 {
			if resp.ReadAheadQuery != 0 {
				// Answered off this loop: settling writes a frame.
				go c.answerQuery(resp.ReadAheadQuery)
			}
			continue
		}
		c.mu.Lock()
		if c.deliverAhead(resp) {
			c.mu.Unlock()
			continue
		}
		ch := c.pending[resp.Id]
		delete(c.pending, resp.Id)
		c.mu.Unlock()
		if ch != nil {
			ch <- result{resp: resp}
		}
	}
}

func (c *Client) fail(err error) {
	c.conn.Close()
	c.mu.Lock()
	c.err = err
	pending := c.pending
	c.pending = nil
	for _, a := range c.aheads {
		select {
		case <-a.ready: // answered: its results stand, its claims fail
			a.final = true
		default:
			a.err = err
			close(a.ready)
		}
	}
	c.aheads = nil
	c.mu.Unlock()
	for _, ch := range pending {
		ch <- result{err: err}
	}
	close(c.done)
}
