package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sync"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// Read-ahead lets a parser run a sequential command (guest-file-read) before
// the host asks for it, several times in one crossing, so the data is already
// in the parser when the host's next requests come: the crossings to the
// command plugin overlap the host's own work instead of adding to it, and
// there are fewer of them. The parser owns the decision whether a result
// reaches the host (it claims results in order, or releases the rest); the
// plugin owns the state the runs changed and undoes what was released.
// Whoever needs that state first makes the two meet: the parser settles on
// its own when it can, the plugin asks it when it cannot wait (see the proto's
// RunRequest.read_ahead).

// errSuperseded: a run meant to carry on from one that was released.
var errSuperseded = errors.New("dataplane: the read-ahead run it carried on from was released")

// ErrUnsettled is Ticket.Settle's answer when the parser's connection closed
// before it said how many results the host got: the state the run changed
// is unknown to the host and must not be used as if it were not.
var ErrUnsettled = errors.New("the parser that read ahead stopped before saying what the host received")

// Ahead is a read-ahead run on the parser's side of a connection.
type Ahead struct {
	c     *Client
	token uint64
	ready chan struct{} // closed when the response (or the failure) is in

	// Guarded by c.mu, like the table of runs that holds it.
	next    *Ahead // the run that carries on from this one
	claimed uint32 // results given to the host
	final   bool   // the ReadAheadSettled is sent (or the run failed)
	resp    *pb.RunResponse
	err     error
}

// ReadAhead sends req as a read-ahead run of up to runs results, carrying on
// from after when it is not nil, and returns at once. The results are taken
// with Claim, in order; Release gives up the rest. The response, whatever
// becomes of the run, is the caller's (Result), blob included: it recycles
// the blob with Client.Release.
func (c *Client) ReadAhead(req *pb.RunRequest, runs uint32, after *Ahead) *Ahead {
	a := &Ahead{c: c, ready: make(chan struct{})}
	// The write lock is taken first and held until the run is sent: a
	// release of after, cascading to this run, must not send its settlement
	// ahead of the run itself.
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	switch {
	case c.err != nil:
		a.err = c.err
	case after != nil && (after.final || after.next != nil):
		a.err = errSuperseded
	}
	if a.err != nil {
		a.final = true
		close(a.ready)
		c.mu.Unlock()
		return a
	}
	c.nextID++
	a.token = c.nextID
	c.aheads[a.token] = a
	if after != nil {
		after.next = a
		req.ReadAheadAfter = after.token
	}
	c.mu.Unlock()

	req.Id, req.ReadAhead, req.ReadAheadRuns = a.token, a.token, runs
	err := c.sendLocked(req)
	req.ReadAhead, req.ReadAheadRuns, req.ReadAheadAfter = 0, 0, 0
	if err != nil {
		c.conn.Close() // the read loop fails every run, this one included
	}
	return a
}

// Ready is closed once the run's results are in.
func (a *Ahead) Ready() <-chan struct{} { return a.ready }

// Result is the run's response, or why there is none; call after Ready.
func (a *Ahead) Result() (*pb.RunResponse, error) {
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	return a.resp, a.err
}

// Claim takes result i, which must be the next one, for the host: once it
// returns true the result is never undone. It reports false when the rest of
// the run was released meanwhile (the plugin needed the state back) or the
// connection failed: the caller then runs the request the ordinary way.
// Claiming the last result settles the run.
func (a *Ahead) Claim(i int) bool {
	c := a.c
	c.mu.Lock()
	if a.final || a.resp == nil || i != int(a.claimed) || i >= len(a.resp.ReadAheadResults) {
		c.mu.Unlock()
		return false
	}
	a.claimed++
	if int(a.claimed) < len(a.resp.ReadAheadResults) {
		c.mu.Unlock()
		return true
	}
	a.final = true
	delete(c.aheads, a.token)
	c.mu.Unlock()
	_ = c.send(&pb.RunRequest{Settled: &pb.ReadAheadSettled{Token: a.token, Claimed: a.claimed}})
	return true
}

// Release gives up what is not claimed of the run, and of the runs carrying
// on from it: the plugin undoes it. Safe to call more than once.
func (a *Ahead) Release() {
	c := a.c
	var frames []*pb.ReadAheadSettled
	c.mu.Lock()
	for x := a; x != nil; x = x.next {
		if x.final {
			continue
		}
		x.final = true
		select {
		case <-x.ready:
			delete(c.aheads, x.token)
		default:
			// Still running: the read loop forgets it when it answers.
		}
		frames = append(frames, &pb.ReadAheadSettled{Token: x.token, Claimed: x.claimed})
	}
	c.mu.Unlock()
	for _, f := range frames {
		_ = c.send(&pb.RunRequest{Settled: f})
	}
}

// deliverAhead hands a read-ahead run its response; called by the read loop
// with c.mu held. It reports false when the id is not a read-ahead run.
func (c *Client) deliverAhead(resp *pb.RunResponse) bool {
	a := c.aheads[resp.Id]
	if a == nil {
		return false
	}
	if a.final { // released while it ran
		delete(c.aheads, resp.Id)
	}
	a.resp = resp
	close(a.ready)
	return true
}

// answerQuery settles a token the plugin asked about: what is not claimed
// yet is released. A token already settled needs nothing: its final frame is
// on the way, ahead of any answer.
func (c *Client) answerQuery(token uint64) {
	c.mu.Lock()
	a := c.aheads[token]
	c.mu.Unlock()
	if a != nil {
		a.Release()
	}
}

// Ticket is a read-ahead run on the plugin's side: the command records with
// it how to undo each result, and whoever next needs the state the run
// changed calls Settle first.
type Ticket struct {
	conn  *serverConn
	token uint64
	after uint64
	done  chan struct{} // closed by the settlement, or the connection's end

	mu      sync.Mutex
	claimed uint32
	lost    bool // the connection ended first
	asked   bool
}

type ticketKey struct{}

// TicketFrom returns the read-ahead ticket of the request being run, or nil
// for an ordinary run.
func TicketFrom(ctx context.Context) *Ticket {
	t, _ := ctx.Value(ticketKey{}).(*Ticket)
	return t
}

// Continues tells whether this run carries on from prev's, on the same
// connection: the plugin keeps prev's effect and stacks this one on it.
func (t *Ticket) Continues(prev *Ticket) bool {
	return t != nil && prev != nil && t.conn == prev.conn && t.after == prev.token
}

// Settle waits for the parser's word on the run, asking for it when it has
// not come, and returns how many results, from the first, reached the host:
// their effect stays, the rest is to be undone. The error is ErrUnsettled
// when the connection ended first, or ctx's when it ended first (then
// nothing is known yet and Settle may be called again).
func (t *Ticket) Settle(ctx context.Context) (claimed int, err error) {
	t.mu.Lock()
	ask := !t.asked
	t.asked = true
	t.mu.Unlock()
	select {
	case <-t.done:
	default:
		if ask {
			t.conn.respond(&pb.RunResponse{ReadAheadQuery: t.token}, nil)
		}
		select {
		case <-t.done:
		case <-ctx.Done():
			return 0, fmt.Errorf("read-ahead run %d not settled by the parser: %w", t.token, ctx.Err())
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lost {
		return 0, ErrUnsettled
	}
	return int(t.claimed), nil
}

// settle records the parser's word, or (lost) that none will come.
func (t *Ticket) settle(claimed uint32, lost bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.done:
		return
	default:
	}
	t.claimed, t.lost = claimed, lost
	close(t.done)
}
