package sdk

import (
	"context"
	"encoding/json"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

// Dialect decodes and encodes one wire protocol ("qga", "nova", ...).
type Dialect interface {
	Name() string
	// ServeStream serves one byte-stream session (a virtio-serial port, a
	// socket connection) until it ends or ctx is done.
	ServeStream(ctx context.Context, s *StreamSession) error
	// HandleMessage answers one whole request of a message session (XenStore)
	// or of Parser.ParseRequest. A nil reply sends nothing.
	HandleMessage(ctx context.Context, d Dispatcher, req []byte) []byte
}

// Dispatcher runs commands for a dialect: core commands, allow and block
// lists, the frozen state and the routes to command plugins are its business.
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

	// epoch and hostEpoch are the session's epochs its request arrived in,
	// isSync whether it was a sync (StreamSession.Go, WriteReply).
	epoch, hostEpoch uint64
	isSync           bool
}

// Done releases the outcome's buffers; safe on any outcome.
func (o *Outcome) Done() {
	if o != nil && o.Release != nil {
		o.Release()
		o.Release = nil
	}
}

// ParserPlugin is a plugin that serves dialects.
type ParserPlugin struct {
	Name     string
	Version  string
	Dialects []Dialect
	Logger   hclog.Logger
}
