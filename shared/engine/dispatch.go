package engine

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/internal/wire"
	"github.com/hashicorp/go-hclog"
)

// dispatcher implements dialect.Dispatcher for one session.
type dispatcher struct {
	e      *Engine
	st     *channelState
	caller *pb.Caller

	// readAhead: the session reads ahead (stream sessions; see readahead.go).
	readAhead bool
	aheadMu   sync.Mutex
	aheads    []*aheadBatch // at most two, the second carrying on from the first
	closed    bool          // the session ended: no new read-ahead
}

func (e *Engine) newDispatcher(st *channelState, caller *pb.Caller) *dispatcher {
	return &dispatcher{e: e, st: st, caller: caller}
}

func (d *dispatcher) Caller() *pb.Caller   { return d.caller }
func (d *dispatcher) Logger() hclog.Logger { return d.e.logger }

func (d *dispatcher) AgentVersion() string {
	d.e.mu.RLock()
	defer d.e.mu.RUnlock()
	if d.e.cfg == nil || d.e.cfg.AgentVersion == "" {
		return "unknown"
	}
	return d.e.cfg.AgentVersion
}

// failOutcome is the outcome of a command the engine refused or failed
// itself: the Failure for the dialect to word, and a plain rendering of it
// in Err (class CommandNotFound for a command refused as not there,
// GenericError otherwise).
func failOutcome(f *dialect.Failure) *dialect.Outcome {
	class := wire.ClassGenericError
	switch f.Kind {
	case dialect.FailUnknown, dialect.FailDisabled, dialect.FailFrozen:
		class = wire.ClassCommandNotFound
	}
	return &dialect.Outcome{Err: &pb.Error{Class: class, Desc: f.Error()}, Failure: f}
}

// Dispatch runs one command.
func (d *dispatcher) Dispatch(ctx context.Context, command string, args json.RawMessage) *dialect.Outcome {
	o, next := d.dispatch(ctx, command, args)
	if next != nil {
		next()
	}
	return o
}

// dispatch runs one command, step by step: answer a local command of the
// dialect, or route it (routing.go) and refuse it, build the plugin's request (taking a bulk argument
// out), run it (from read-ahead or on the plugin), and shape the outcome.
// next, when not nil, starts the read-ahead of the host's likely next
// request: call it once the reply is on its way.
func (d *dispatcher) dispatch(ctx context.Context, command string, args json.RawMessage) (o *dialect.Outcome, next func()) {
	if local := d.st.local[command]; local != nil {
		if o := d.refusal(command, nil); o != nil {
			return o, nil
		}
		return local.Run(ctx, d, args), nil
	}
	route, lim := d.routeOf(ctx, command)
	if o := d.refusal(command, route); o != nil {
		return o, nil
	}
	req, o := d.request(route, command, args)
	if o != nil {
		return o, nil
	}
	ctx, cancel := context.WithTimeout(ctx, lim.commandTimeout)
	defer cancel()
	resp, o := d.run(ctx, route, req, lim.commandTimeout)
	if resp == nil {
		return o, nil // failed before the plugin answered
	}
	return d.shape(route, req, resp, o, lim.readAheadMax)
}

// request is what the plugin gets: the arguments ("{}" when absent) and the
// caller, with a bulk argument (CommandSpec.blob_arg) decoded into its blob.
func (d *dispatcher) request(route *pb.Route, command string, args json.RawMessage) (*pb.RunRequest, *dialect.Outcome) {
	req := &pb.RunRequest{Command: command, ArgsJson: argsObject(args), Caller: d.caller}
	if member := route.GetSpec().GetBlobArg(); member != "" {
		if o := extractBlobArg(req, member, &d.e.blobPool); o != nil {
			return nil, o
		}
	}
	return req, nil
}

// run answers req from the session's read-ahead when a batch holds its
// result, else calls the plugin. A nil response comes with the outcome of
// the failure; otherwise the outcome carries what the plugin's buffers
// hold (Release) and, from read-ahead, the blob already in base64.
func (d *dispatcher) run(ctx context.Context, route *pb.Route, req *pb.RunRequest, timeout time.Duration) (*pb.RunResponse, *dialect.Outcome) {
	if d.readAhead {
		if b := d.takeAhead(route.Plugin, req.Command, req.ArgsJson); b != nil {
			if o, r := d.claimAhead(ctx, b); o != nil {
				return &pb.RunResponse{ResultJson: r.ResultJson, More: r.More}, o
			}
		}
	}
	req.DeadlineUnixNano = time.Now().Add(timeout).UnixNano()
	resp, release, err := d.e.call(ctx, route.Plugin, req)
	if route.GetSpec().GetBlobArg() != "" {
		d.e.blobPool.Put(req.Blob) // written to the plugin by now
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, failOutcome(&dialect.Failure{Kind: dialect.FailTimeout, Command: req.Command, Timeout: timeout})
		}
		return nil, failOutcome(&dialect.Failure{Kind: dialect.FailUnavailable, Command: req.Command, Cause: err})
	}
	return resp, &dialect.Outcome{Result: resp.ResultJson, Release: release}
}

// shape completes the outcome of a plugin's response: the freeze state it
// reports, its error, the bulk result member (CommandSpec.blob_result), and
// the read-ahead that follows a result with more to read.
func (d *dispatcher) shape(route *pb.Route, req *pb.RunRequest, resp *pb.RunResponse, o *dialect.Outcome, readAheadMax int64) (*dialect.Outcome, func()) {
	spec := route.GetSpec()
	d.e.freeze.record(resp.FreezeState, d)
	if resp.Error != nil {
		o.Done()
		return &dialect.Outcome{Err: resp.Error}, nil
	}
	o.NoResponse = resp.NoResponse
	if spec.GetBlobResult() != "" {
		o.BlobField = spec.BlobResult
		if o.Blob == nil {
			o.Blob = resp.Blob
		}
		if o.Blob == nil {
			o.Blob = []byte{}
		}
	}
	if len(o.Blob) >= dataplane.BulkSize || len(req.Blob) >= dataplane.BulkSize {
		d.e.memory.BulkDone()
	}
	if !d.readAhead || !spec.GetReadAhead() || !resp.More {
		return o, nil
	}
	blobSize := len(o.Blob)
	return o, func() { d.readOn(route.Plugin, spec.GetBlobResult(), req, blobSize, readAheadMax) }
}
