// Package dialect is the contract between the parser engine and a wire
// dialect ("qga", "nova", ...): what a dialect implements (Dialect) and what
// the engine gives it (StreamSession, Dispatcher, Outcome). A dialect only
// decodes requests and encodes replies; the engine owns sessions, routing
// (allow/block lists, the frozen state), plugin connections, memory budgets
// and read-ahead. Package sdk re-exports these types for plugin authors.
package dialect

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"time"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

// Dialect decodes and encodes one wire protocol ("qga", "nova", ...).
type Dialect interface {
	Name() string
	// ServeStream serves one byte-stream session (a virtio-serial port, a
	// socket connection) until it ends or ctx is done.
	ServeStream(ctx context.Context, s StreamSession) error
	// HandleMessage answers one whole request of a message session (XenStore)
	// or of Parser.ParseRequest. A nil reply sends nothing.
	HandleMessage(ctx context.Context, d Dispatcher, req []byte) []byte
}

// Dispatcher runs commands for a dialect: allow and block lists, the frozen
// state and the routes to command plugins are its business.
type Dispatcher interface {
	// Dispatch runs one command. args is the arguments object (may be nil).
	Dispatch(ctx context.Context, command string, args json.RawMessage) *Outcome
	// Commands lists every command known to the agent, for guest-info and
	// "features".
	Commands() []CommandInfo
	// AgentVersion is the agent's version string.
	AgentVersion() string
	// Caller identifies the session.
	Caller() *pb.Caller
	Logger() hclog.Logger
}

// StreamSession is one byte-stream session given to Dialect.ServeStream: it
// reads the peer's bytes, runs commands without blocking the reader (Go),
// and writes whole replies that never interleave.
type StreamSession interface {
	Dispatcher
	// Read reads from the session.
	io.Reader
	// Write writes one whole reply; replies from concurrent commands never
	// interleave.
	io.Writer
	// WriteBuffers writes one whole reply given in parts (with one writev
	// on a socket); like Write, it never interleaves with another reply.
	WriteBuffers(parts net.Buffers) (int64, error)
	// Go runs a command without blocking the session's reader: core
	// commands run at once in the caller; commands of one plugin run one
	// after another in the order they arrived (a pipelining client's writes
	// to one file stay in order), and different plugins run side by side,
	// so a slow command never holds up a ping. done receives the outcome,
	// to be written with WriteReply. Go blocks while the session has its
	// limit of commands in flight.
	//
	// guest-sync and guest-sync-delimited are barriers: once Go returns for
	// one, no reply to a request that arrived before it is written (their
	// commands still run; their replies are dropped).
	Go(ctx context.Context, command string, args json.RawMessage, done func(*Outcome))
	// WriteReply writes the reply to the outcome of Go, given in parts,
	// unless the host resynchronised or reconnected since its request
	// arrived: then the reply is dropped (written reports false), as the
	// host gave up on it.
	WriteReply(o *Outcome, parts ...[]byte) (written bool, err error)
	// Buffers is the pool a dialect takes its large request and reply
	// buffers from; the engine gives its memory back to the system once
	// idle.
	Buffers() *dataplane.BufferPool
	// MaxRequestBytes is the configured limit on one request.
	MaxRequestBytes() int64
	// Persistent reports whether the session outlives host disconnects
	// (virtio-serial): on EOF call WaitHost instead of ending.
	Persistent() bool
	// WaitHost blocks after an EOF on a persistent session until the host
	// may be back. It returns at once when a host event arrived since the
	// last call, so an EOF can never turn into a busy loop and a reconnect
	// is never missed.
	WaitHost(ctx context.Context) error
	// WaitRoom blocks until the session may read more: the bytes held for
	// it and for its channel are under their budgets (limits
	// session_memory_max and channel_memory_max). Dialects call it before
	// each read. A non-zero deadline (that of a partial request, see
	// RequestIdleTimeout) ends the wait with os.ErrDeadlineExceeded: a
	// session stuck with half a request must give its bytes up, or sessions
	// all waiting for room would wait for ever.
	WaitRoom(ctx context.Context, deadline time.Time) error
	// HoldPending tells how many bytes of a request not yet complete the
	// dialect holds (0 once it is complete or dropped): they count against
	// the budget, and a peer that stops sending them meets
	// RequestIdleTimeout.
	HoldPending(n int64)
	// RequestIdleTimeout is how long a started request may wait for its
	// next bytes (limit request_idle_timeout); 0: no limit.
	RequestIdleTimeout() time.Duration
	// SetReadDeadline sets the deadline of the session's next reads where
	// the transport has deadlines; it reports whether it has. Dialects use
	// it with RequestIdleTimeout.
	SetReadDeadline(t time.Time) bool
	// Origin describes where the session comes from, for logs.
	Origin() string
}

// CommandInfo is one entry of guest-info's supported_commands.
type CommandInfo struct {
	Name            string
	Enabled         bool
	SuccessResponse bool
}

// Outcome is the result of one dispatched command.
type Outcome struct {
	// Result is the JSON return value when Err is nil.
	Result json.RawMessage
	// Blob, when not nil, is to be inserted into the Result object as member
	// BlobField, base64-encoded.
	Blob      []byte
	BlobField string
	// BlobText, when not nil, is Blob already base64-encoded (standard
	// alphabet, padded): a read-ahead result encoded while the host was
	// busy. Use it instead of encoding Blob.
	BlobText []byte
	Err      *pb.Error
	// NoResponse: success, and the command sends no reply.
	NoResponse bool
	// Release, when not nil, recycles Blob's buffer: call it once the reply
	// is encoded (see Done).
	Release func()
	// Place is where the request stood in its stream session, set by
	// StreamSession.Go and read by WriteReply. A dialect passes the outcome
	// on unchanged.
	Place Place
}

// Place is a request's place in its stream session (StreamSession.Go).
type Place struct {
	// Epoch counts the session's resynchronisations (barriers) before the
	// request, HostEpoch the host's disconnects of a persistent session.
	Epoch, HostEpoch uint64
	// Barrier: the request was a resynchronisation (guest-sync).
	Barrier bool
}

// Done releases the outcome's buffers; safe on any outcome.
func (o *Outcome) Done() {
	if o != nil && o.Release != nil {
		o.Release()
		o.Release = nil
	}
}
