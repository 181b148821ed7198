package engine

import (
	"bytes"
	"context"
	"encoding/base64"
	"sync/atomic"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/internal/wire"
)

// A host copying a file out of the guest sends guest-file-read after
// guest-file-read on one handle, each only when it has decoded the previous
// reply. A stream session therefore reads ahead (CommandSpec.read_ahead, once
// the plugin said there is more): one crossing to the plugin brings the
// results of several runs, encoded to base64 while the host is still busy,
// and the next batch is asked for as soon as one is in, so two are in flight.
// When the host's request comes, its reply is ready to write. dataplane/readahead.go keeps it
// exact: the plugin undoes what the host never got before anything else can
// see it.

// maxAheadRuns bounds the results of one read-ahead batch (4 KiB reads: 128
// KiB a batch).
const maxAheadRuns = 32

// aheadBatch is one read-ahead run of a session.
type aheadBatch struct {
	plugin    string
	blobField string
	client    *dataplane.Client
	run       *dataplane.Ahead
	session   *dispatcher
	req       *pb.RunRequest // what it runs, and answers
	runs      int

	prepared chan struct{} // closed when the fields below are set
	results  []*pb.ReadAheadResult
	blobs    [][]byte // each result's blob, a slice of the response's
	texts    [][]byte // each blob in base64 (nil: none), from engine.textPool
	blob     []byte   // the response's blob, from the client's pool

	next int          // the next result to claim; guarded by the session's aheadMu
	refs atomic.Int32 // the session's hold, prepare, and outcomes not done
}

// answers tells whether the batch answers a request for command with args.
func (b *aheadBatch) answers(command string, args []byte) bool {
	return b.req.Command == command && bytes.Equal(b.req.ArgsJson, args)
}

// startAhead sends a batch of runs of req, carrying on from after if not
// nil. Call with d.aheadMu held.
func (d *dispatcher) startAhead(client *dataplane.Client, plugin, blobField string, req *pb.RunRequest, runs int, after *aheadBatch) *aheadBatch {
	b := &aheadBatch{plugin: plugin, blobField: blobField, client: client, session: d, req: req, runs: runs, prepared: make(chan struct{})}
	b.refs.Store(2) // the session's and prepare's
	var prev *dataplane.Ahead
	if after != nil {
		prev = after.run
	}
	b.run = client.ReadAhead(req, uint32(runs), prev)
	d.aheads = append(d.aheads, b)
	go b.prepare()
	return b
}

// prepare takes the batch's response when it comes and encodes the blobs,
// on a core the host's decoding of the last reply leaves idle.
func (b *aheadBatch) prepare() {
	defer b.unref()
	<-b.run.Ready()
	resp, err := b.run.Result()
	if err == nil && resp != nil && resp.Error == nil {
		b.blob = resp.Blob
		off := 0
		for _, r := range resp.ReadAheadResults {
			end := off + int(r.BlobSize)
			if end > len(resp.Blob) {
				break // a malformed response: use what is consistent
			}
			b.results = append(b.results, r)
			b.blobs = append(b.blobs, resp.Blob[off:end:end])
			off = end
		}
		b.texts = b.encode()
	} else if resp != nil {
		b.blob = resp.Blob
	}
	close(b.prepared)
	b.session.extend(b)
}

// extend starts the batch that carries on from b, now that b is in, when b
// is the session's last and the host can still want more.
func (d *dispatcher) extend(b *aheadBatch) {
	d.aheadMu.Lock()
	defer d.aheadMu.Unlock()
	if d.closed || len(d.aheads) != 1 || d.aheads[0] != b || len(b.results) == 0 || !b.results[len(b.results)-1].More {
		return
	}
	d.startAhead(b.client, b.plugin, b.blobField, b.req, b.runs, b)
}

// encode base64-encodes every blob, while the host decodes the last reply.
func (b *aheadBatch) encode() [][]byte {
	texts := make([][]byte, len(b.blobs))
	if b.blobField == "" {
		return texts
	}
	for i, blob := range b.blobs {
		if len(blob) > 0 {
			texts[i] = b.session.e.textPool.Get(base64.StdEncoding.EncodedLen(len(blob)))
			wire.EncodeBase64(texts[i], blob)
		}
	}
	return texts
}

func (b *aheadBatch) isPrepared() bool {
	select {
	case <-b.prepared:
		return true
	default:
		return false
	}
}

// unref drops one hold; the last recycles the buffers.
func (b *aheadBatch) unref() {
	if b.refs.Add(-1) != 0 {
		return
	}
	b.client.Release(b.blob)
	for _, t := range b.texts {
		b.session.e.textPool.Put(t)
	}
	b.blob, b.blobs, b.texts = nil, nil, nil
}

// usable tells whether the next result can answer the host; call with the
// session's aheadMu held, once prepared.
func (b *aheadBatch) usable() bool {
	return b.next < len(b.results) && b.results[b.next].Error == nil
}

// takeAhead returns the session's batch when it answers the request, and gives up
// the batches of the same plugin otherwise: the request about to go to the
// plugin likely needs the state they changed, and settling now spares the
// plugin asking.
func (d *dispatcher) takeAhead(plugin, command string, args []byte) *aheadBatch {
	d.aheadMu.Lock()
	defer d.aheadMu.Unlock()
	if len(d.aheads) == 0 || d.aheads[0].plugin != plugin {
		return nil
	}
	if d.aheads[0].answers(command, args) {
		return d.aheads[0]
	}
	d.discardAheadsLocked()
	return nil
}

// claimAhead answers the request from batch b, which takeAhead returned. A
// nil outcome means it cannot (the batch failed, ran out, or was released
// meanwhile): the caller runs the request itself.
func (d *dispatcher) claimAhead(ctx context.Context, b *aheadBatch) (*dialect.Outcome, *pb.ReadAheadResult) {
	select {
	case <-b.prepared:
	case <-ctx.Done():
		return nil, nil
	}
	d.aheadMu.Lock()
	defer d.aheadMu.Unlock()
	if len(d.aheads) == 0 || d.aheads[0] != b {
		return nil, nil // discarded meanwhile
	}
	i := b.next
	if !b.usable() || !b.run.Claim(i) {
		d.discardAheadsLocked()
		return nil, nil
	}
	b.next++
	b.refs.Add(1)
	o := &dialect.Outcome{Result: b.results[i].ResultJson, Blob: b.blobs[i], BlobText: b.texts[i], Release: b.unref}
	if b.next == len(b.results) {
		d.aheads = d.aheads[1:]
		b.unref()
	}
	return o, b.results[i]
}

// readOn keeps the session's read-ahead going after it answered req with a
// result of blobSize bytes that has more: a new batch when there is none,
// the next one when only one is left and it is in (see extend).
func (d *dispatcher) readOn(plugin, blobField string, req *pb.RunRequest, blobSize int, maxBytes int64) {
	d.aheadMu.Lock()
	defer d.aheadMu.Unlock()
	if d.closed {
		return
	}
	var after *aheadBatch
	switch len(d.aheads) {
	case 0:
	case 1:
		head := d.aheads[0]
		if !head.answers(req.Command, req.ArgsJson) || !head.isPrepared() || len(head.results) == 0 || !head.results[len(head.results)-1].More {
			return
		}
		after = head
	default:
		return
	}
	d.e.mu.RLock()
	pc := d.e.plugins[plugin]
	d.e.mu.RUnlock()
	client := pc.current()
	if client == nil {
		return // the next request dials as usual
	}
	runs := int(min(maxBytes/int64(max(blobSize, 1)), maxAheadRuns))
	if runs < 1 {
		return
	}
	// A copy: the request's own buffer may go back to a pool.
	run := &pb.RunRequest{Command: req.Command, ArgsJson: append([]byte(nil), req.ArgsJson...), Caller: req.Caller}
	d.startAhead(client, plugin, blobField, run, runs, after)
}

// peekAhead tells whether the session can answer a request for command with
// args from a prepared batch at once.
func (d *dispatcher) peekAhead(command string, args []byte) bool {
	d.aheadMu.Lock()
	defer d.aheadMu.Unlock()
	return len(d.aheads) > 0 && d.aheads[0].answers(command, args) && d.aheads[0].isPrepared() && d.aheads[0].usable()
}

// discardAheadsLocked gives up every batch: the plugin undoes what the host
// did not get. Call with aheadMu held.
func (d *dispatcher) discardAheadsLocked() {
	for _, b := range d.aheads {
		b.run.Release() // the first's release has settled the next already
		b.unref()
	}
	d.aheads = nil
}

// dropAhead gives up the session's batches; the session is ending.
func (d *dispatcher) dropAhead() {
	d.aheadMu.Lock()
	defer d.aheadMu.Unlock()
	d.closed = true
	d.discardAheadsLocked()
}
