// Package dialect is the contract between the parser engine and a wire
// dialect ("qga", "nova", ...): what a dialect implements (Dialect, with its
// Options) and what the engine gives it (StreamSession, Dispatcher,
// Outcome). Package sdk re-exports these types; sdk.ServeParser runs a
// parser plugin's dialects on the engine (package engine).
//
// A dialect decodes requests and encodes replies, and decides what is its
// own: the commands it answers in the parser process (Options.LocalCommands:
// qga's guest-sync, guest-ping, guest-info), the words of every error
// (Outcome.Failure says why the engine refused or failed a command; the
// dialect renders it), and whether its replies must follow request order
// (Options.OrderedReplies, for protocols without request ids). The engine
// owns the rest: sessions, routing (the channel's allow and block lists,
// the frozen state, which plugin serves a command), plugin connections,
// memory budgets and read-ahead.
//
// The life of a request on a stream session: the dialect reads bytes
// (StreamSession.Read, after WaitRoom), decodes one request, and calls
// StreamSession.Go with the command name and its arguments object. The
// engine routes it and calls done with an Outcome, from the reader or from
// the goroutine of the plugin that served it. In done the dialect encodes
// the reply (Outcome.AppendResult, or BlobSplice for bulk data written
// without a copy) and writes it with StreamSession.WriteReply, then calls
// Outcome.Done. A message session (XenStore) or ParseRequest hands whole
// requests to HandleMessage, which runs them with Dispatcher.Dispatch.
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
	// Name is the dialect's name, as channels name it in agent.hcl.
	Name() string
	// Options tells the engine how to run the dialect; asked once, when a
	// channel of the dialect is configured.
	Options() Options
	// ServeStream serves one byte-stream session (a virtio-serial port, a
	// socket connection) until it ends or ctx is done.
	ServeStream(ctx context.Context, s StreamSession) error
	// HandleMessage answers one whole request of a message session (XenStore)
	// or of Parser.ParseRequest. A nil reply sends nothing.
	HandleMessage(ctx context.Context, d Dispatcher, req []byte) []byte
}

// Options are what a dialect decides for itself. The zero value is a
// dialect with no local commands whose replies may go out in any order.
type Options struct {
	// LocalCommands are answered in the parser process, by the dialect,
	// without crossing to a plugin (qga's guest-sync and guest-ping: the
	// ping latency depends on it). They obey the channel's allow and block
	// lists and run while the guest is frozen. On a channel of this
	// dialect a local command hides a plugin's command of the same name.
	LocalCommands []LocalCommand
	// OrderedReplies: on a stream session, replies are written in the
	// order their requests were given to StreamSession.Go, whatever order
	// the commands finish in (for protocols without request ids, such as
	// negotiator's). Commands still run side by side; a reply waits in
	// WriteReply for the replies before it. Write and WriteBuffers then
	// take their place in that order too, as if they answered a request
	// read at that moment: call them from the reader.
	OrderedReplies bool
}

// LocalCommand is a command a dialect answers itself (Options).
type LocalCommand struct {
	Name string
	// SuccessResponse: the command replies on success (guest-info's
	// success-response).
	SuccessResponse bool
	// Barrier: the command resynchronises the session (qga's guest-sync):
	// once StreamSession.Go returns for it, no reply to a request that
	// arrived before it is written.
	Barrier bool
	// ListsCommands: Run calls Dispatcher.Commands, which waits while the
	// agent still learns its plugins; a stream session then runs it off
	// the reader, so that what follows it is not held up.
	ListsCommands bool
	// Run answers the command; args is the arguments object (may be nil).
	Run func(ctx context.Context, d Dispatcher, args json.RawMessage) *Outcome
}

// Dispatcher runs commands for a dialect: the dialect's local commands,
// the channel's allow and block lists, the frozen state and the routes to
// command plugins are its business.
type Dispatcher interface {
	// Dispatch runs one command. args is the arguments object (may be nil).
	// It always returns an outcome; call its Done once the reply is
	// encoded.
	Dispatch(ctx context.Context, command string, args json.RawMessage) *Outcome
	// Commands lists the commands of the channel, local ones included, as
	// they stand for this caller (disabled by the channel's lists or the
	// frozen state), sorted by name: for guest-info and "features".
	Commands() []CommandInfo
	// AgentVersion is the agent's version string.
	AgentVersion() string
	// Caller identifies who sends the session's requests: the channel and
	// dialect, and the peer's uid, gid and pid where the transport tells
	// them (SO_PEERCRED of a local socket; -1 when unknown). Every request
	// of the session runs as this caller, and command plugins receive it.
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
	// Go runs a command without blocking the session's reader: local
	// commands and refusals are answered at once, on the reader; commands
	// of one plugin run one after another in the order they arrived (a
	// pipelining client's writes to one file stay in order), and different
	// plugins run side by side, so a slow command never holds up a ping.
	// done receives the outcome, to be written with WriteReply from done
	// (or not at all: a reply the dialect does not write is skipped, also
	// in ordered sessions). Go blocks while the session has its limit of
	// commands in flight; call it from the reader.
	//
	// A local command declared Barrier is one: once Go returns for it, no
	// reply to a request that arrived before it is written (their commands
	// still run; their replies are dropped).
	Go(ctx context.Context, command string, args json.RawMessage, done func(*Outcome))
	// WriteReply writes the reply to the outcome of Go, given in parts
	// (one writev on a socket), unless the host resynchronised or
	// reconnected since its request arrived: then the reply is dropped
	// (written reports false), as the host gave up on it. With
	// Options.OrderedReplies it first waits for the replies to earlier
	// requests.
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
	// RequestTimeout is the channel's request_timeout: how long a
	// connection may take to send its whole request (the monitor
	// dialect's); 0: the dialect's default.
	RequestTimeout() time.Duration
	// CloseWrite ends the session's writing side while its reading side
	// stays open (a socket's shutdown(SHUT_WR)): the peer reads EOF after
	// the last reply, and what it sent beyond may still be read and
	// dropped (closing a unix socket with input unread makes the peer's
	// next read fail with ECONNRESET instead of EOF). Sessions without
	// half-close report an error and stay as they were.
	CloseWrite() error
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
	// Err is the command's failure: a plugin's error (its class and text),
	// or the engine's, which also sets Failure.
	Err *pb.Error
	// Failure, when not nil, says why the engine itself refused or failed
	// the command; Err then holds a plain English rendering of it, and a
	// dialect words it its own way (qga's texts are qemu-ga's).
	Failure *Failure
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
	// Seq numbers the session's requests from 1 (ordered replies); 0 on an
	// outcome that did not come from Go.
	Seq uint64
}

// Done releases the outcome's buffers; safe on any outcome.
func (o *Outcome) Done() {
	if o != nil && o.Release != nil {
		o.Release()
		o.Release = nil
	}
}
