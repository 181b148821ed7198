package dataplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
	"unicode/utf8"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"
)

// Fuzz targets for what a peer on the data plane can send: a parser's
// RunRequest frames to a command plugin, a plugin's RunResponse frames to a
// parser. Each side is a process of the agent, but a crashed, buggy or
// out-of-tree plugin must cost its own requests only.

// frame encodes one frame as writeFrame sends it.
func frame(t testing.TB, meta proto.Message, blobs ...[]byte) []byte {
	var b bytes.Buffer
	if _, err := writeFrame(&b, meta, blobs, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// rawHeader is a frame header announcing metaLen+blobLen bytes.
func rawHeader(metaLen, blobLen uint32) []byte {
	var h [headerLen]byte
	binary.BigEndian.PutUint32(h[0:4], metaLen)
	binary.BigEndian.PutUint32(h[4:8], blobLen)
	return h[:]
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// seedStreams are real conversations in both directions plus the usual
// tricks: truncation, limits, garbage protobuf, blob sizes that disagree.
func seedStreams(t testing.TB) [][]byte {
	req := frame(t, &pb.RunRequest{Id: 1, Command: "guest-file-write", ArgsJson: []byte(`{"handle":1000,"buf-b64":""}`),
		Caller: &pb.Caller{Channel: "qga", Dialect: "qga", PeerPid: -1, PeerUid: -1, PeerGid: -1}, DeadlineUnixNano: 1}, []byte("hello"))
	ahead := frame(t, &pb.RunRequest{Id: 2, Command: "guest-file-read", ArgsJson: []byte(`{"handle":1000,"count":4}`), ReadAhead: 2, ReadAheadRuns: 3})
	settled := frame(t, &pb.RunRequest{Settled: &pb.ReadAheadSettled{Token: 2, Claimed: 1}})
	resp := frame(t, &pb.RunResponse{Id: 1, ResultJson: []byte(`{"count":3,"eof":true}`)}, []byte("abc"))
	results := frame(t, &pb.RunResponse{Id: 2, More: true, ReadAheadResults: []*pb.ReadAheadResult{
		{ResultJson: []byte(`{"count":2}`), BlobSize: 2, More: true},
		{ResultJson: []byte(`{"count":1,"eof":true}`), BlobSize: 1},
		{Error: &pb.Error{Class: "GenericError", Desc: "x"}},
	}}, []byte("ab"), []byte("c"))
	badSizes := frame(t, &pb.RunResponse{Id: 2, ReadAheadResults: []*pb.ReadAheadResult{{BlobSize: 1 << 31}, {BlobSize: 7}}}, []byte("xy"))
	query := frame(t, &pb.RunResponse{ReadAheadQuery: 2})
	errResp := frame(t, &pb.RunResponse{Id: 1, Error: &pb.Error{Class: "CommandNotFound", Desc: "no"}, FreezeState: pb.FreezeState_FREEZE_STATE_FROZEN})
	return [][]byte{
		nil,
		req,
		concat(req, ahead, settled),
		concat(resp, results, query),
		concat(query, badSizes, errResp),
		req[:len(req)-2],                  // blob cut short
		req[:headerLen+3],                 // meta cut short
		req[:5],                           // header cut short
		rawHeader(maxMeta+1, 0),           // over the limits
		rawHeader(0, MaxBlob+1),           // over the limits
		rawHeader(0xffffffff, 0xffffffff), // far over the limits
		concat(rawHeader(3, 0), []byte{0xff, 0xff, 0xff}),       // not protobuf
		concat(rawHeader(2, 0), []byte{0x0a, 0x05}),             // length past the end
		concat(rawHeader(4, 0), []byte{0x12, 0x02, 0xc3, 0x28}), // command not UTF-8
		concat(rawHeader(maxMeta, MaxBlob), []byte("short")),    // declares the most, sends little
	}
}

// allocated runs fn and returns the bytes allocated meanwhile (by anyone in
// the process, so it is an upper bound of fn's share).
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// decodeAmplification bounds what protobuf decoding allocates per byte of
// meta: a RunResponse of empty read_ahead_results (two bytes each on the
// wire) takes about 62 bytes per byte. Beyond that an allocation is not
// explained by what the peer declared and sent.
const decodeAmplification = 80

// allocSlack covers small fixed costs and the fuzzing engine's own work.
const allocSlack = 256 << 10

// FuzzReadFrame: any byte stream decodes into frames or an error, never a
// panic; a header over the limits is refused without reading on; every
// allocation is explained by the declared lengths (the meta buffer, the blob
// from the pool) and the bytes actually read; every frame accepted encodes
// back to one that decodes the same, blob included.
func FuzzReadFrame(f *testing.F) {
	for _, s := range seedStreams(f) {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, stream []byte, response bool) {
		r := bytes.NewReader(stream)
		var pool BufferPool
		var scratch []byte
		for n := 0; ; n++ {
			off := len(stream) - r.Len()
			var metaLen, blobLen uint32
			if r.Len() >= headerLen {
				metaLen = binary.BigEndian.Uint32(stream[off:])
				blobLen = binary.BigEndian.Uint32(stream[off+4:])
			}
			var meta proto.Message = &pb.RunRequest{}
			if response {
				meta = &pb.RunResponse{}
			}
			var blob []byte
			var err error
			got := allocated(func() { scratch, blob, err = readFrame(r, meta, scratch, &pool) })
			read := uint64(len(stream) - r.Len() - off)
			limit := uint64(allocSlack) + decodeAmplification*read
			if metaLen <= maxMeta && blobLen <= MaxBlob {
				limit += uint64(metaLen) + 2*uint64(blobLen) // the pool rounds up to a power of two
			}
			if got > limit {
				t.Fatalf("frame %d (%d+%d bytes declared, %d read): %d bytes allocated, more than %d", n, metaLen, blobLen, read, got, limit)
			}
			if err != nil {
				if (metaLen > maxMeta || blobLen > MaxBlob) && read != headerLen {
					t.Fatalf("frame %d over the limits (%d+%d): read %d bytes, want the header only", n, metaLen, blobLen, read)
				}
				if r.Len() == 0 && read == 0 && !errors.Is(err, io.EOF) {
					t.Fatalf("clean end between frames: %v, want io.EOF", err)
				}
				return
			}
			if metaLen > maxMeta || blobLen > MaxBlob {
				t.Fatalf("frame %d of %d+%d bytes accepted, over the limits", n, metaLen, blobLen)
			}
			if read != uint64(headerLen)+uint64(metaLen)+uint64(blobLen) || len(blob) != int(blobLen) {
				t.Fatalf("frame %d: read %d bytes, blob %d, header says %d+%d", n, read, len(blob), metaLen, blobLen)
			}
			again := meta.ProtoReflect().Type().New().Interface()
			var b bytes.Buffer
			if _, err := writeFrame(&b, meta, [][]byte{blob}, nil); err != nil {
				t.Fatalf("frame %d decoded but does not encode: %v", n, err)
			}
			_, blob2, err := readFrame(&b, again, nil, nil)
			if err != nil || !proto.Equal(meta, again) || !bytes.Equal(blob, blob2) {
				t.Fatalf("frame %d does not survive encoding again: %v", n, err)
			}
			pool.Put(blob)
		}
	})
}

// FuzzFrameRoundTrip: what writeFrame sends, readFrame returns, whatever
// the values and however the blob is cut into parts; strings that are not
// UTF-8 are refused by the writer rather than sent.
func FuzzFrameRoundTrip(f *testing.F) {
	f.Add(uint64(1), "guest-file-write", []byte(`{"handle":1000}`), []byte("data"), 2, uint64(0), uint32(0), "")
	f.Add(uint64(7), "guest-file-read", []byte(`{"handle":1000,"count":65536}`), []byte(nil), 0, uint64(7), uint32(16), "GenericError")
	f.Add(uint64(0), "", []byte(nil), []byte{0, 0xff}, 1, uint64(0), uint32(0), "\xff")
	f.Fuzz(func(t *testing.T, id uint64, command string, args, blob []byte, cut int, token uint64, runs uint32, class string) {
		var parts [][]byte
		if len(blob) > 0 {
			cut = min(max(cut, 0), len(blob))
			parts = [][]byte{blob[:cut], blob[cut:]}
		}
		valid := []bool{utf8.ValidString(command), utf8.ValidString(command) && utf8.ValidString(class)}
		msgs := []proto.Message{
			&pb.RunRequest{Id: id, Command: command, ArgsJson: args, ReadAhead: token, ReadAheadRuns: runs, ReadAheadAfter: token / 2,
				Caller: &pb.Caller{Channel: command, PeerPid: int32(runs)}},
			&pb.RunResponse{Id: id, ResultJson: args, ReadAheadQuery: token, Error: &pb.Error{Class: class, Desc: command},
				ReadAheadResults: []*pb.ReadAheadResult{{ResultJson: args, BlobSize: uint32(cut), More: runs%2 == 0}}},
		}
		for i, m := range msgs {
			var b bytes.Buffer
			_, err := writeFrame(&b, m, parts, nil)
			if !valid[i] {
				if err == nil {
					t.Fatalf("%T with a string that is not UTF-8 was sent", m)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%T: %v", m, err)
			}
			got := m.ProtoReflect().Type().New().Interface()
			_, gotBlob, err := readFrame(&b, got, nil, nil)
			if err != nil || !proto.Equal(m, got) || !bytes.Equal(gotBlob, blob) || b.Len() != 0 {
				t.Fatalf("%T round trip: %v, equal %v, blob %q want %q, %d bytes left", m, err, proto.Equal(m, got), gotBlob, blob, b.Len())
			}
		}
	})
}

// FuzzServeConn: a command plugin's connection fed anything by its parser
// runs what decodes, answers each request with its id, settles or loses
// every read-ahead ticket, and ends when the stream does: no panic, no hang.
func FuzzServeConn(f *testing.F) {
	for _, s := range seedStreams(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		parser, plugin := net.Pipe()
		h := func(ctx context.Context, req *pb.RunRequest) Answer {
			if tk := TicketFrom(ctx); tk != nil {
				sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, _ = tk.Settle(sctx)
				cancel()
			}
			return Answer{Resp: &pb.RunResponse{ResultJson: append([]byte(nil), req.ArgsJson...), Blob: append([]byte(nil), req.Blob...)}}
		}
		served := make(chan struct{})
		go func() {
			serveConn(context.Background(), plugin, h, hclog.NewNullLogger(), nil)
			close(served)
		}()
		// The parser's side reads every answer until the plugin closes.
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			for {
				if _, _, err := readFrame(parser, &pb.RunResponse{}, nil, nil); err != nil {
					return
				}
			}
		}()
		go func() {
			_, _ = parser.Write(stream)
			// Stop writing; the plugin sees the end of the stream.
			_ = parser.Close()
		}()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatalf("serveConn still running 10 s after a %d byte stream ended", len(stream))
		}
		<-drained
	})
}

// FuzzClientReadLoop: a parser's client fed anything by its command plugin
// delivers what matches a call or a read-ahead run, answers queries, and
// when the stream ends fails whatever is left: every call returns, every
// run becomes ready, claims never panic.
func FuzzClientReadLoop(f *testing.F) {
	for _, s := range seedStreams(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		parser, plugin := net.Pipe()
		c := &Client{conn: parser, pending: make(map[uint64]chan result), aheads: make(map[uint64]*Ahead), done: make(chan struct{})}
		go c.readLoop()
		// The plugin's side reads the client's frames and throws them away.
		go func() {
			for {
				if _, _, err := readFrame(plugin, &pb.RunRequest{}, nil, nil); err != nil {
					return
				}
			}
		}()
		type callResult struct {
			resp *pb.RunResponse
			err  error
		}
		called := make(chan callResult, 1)
		go func() {
			resp, err := c.Call(context.Background(), &pb.RunRequest{Command: "guest-file-write", Blob: []byte("x")})
			called <- callResult{resp, err}
		}()
		for { // the call is id 1 and pending before the plugin answers
			c.mu.Lock()
			n := len(c.pending)
			c.mu.Unlock()
			if n > 0 {
				break
			}
			time.Sleep(50 * time.Microsecond)
		}
		a := c.ReadAhead(&pb.RunRequest{Command: "guest-file-read"}, 3, nil) // token 2
		go func() {
			_, _ = plugin.Write(stream)
			_ = plugin.Close()
		}()
		deadline := time.After(10 * time.Second)
		select {
		case r := <-called:
			if r.err == nil && (r.resp == nil || r.resp.Id != 1) {
				t.Fatalf("call 1 answered with %v", r.resp)
			}
			if r.err != nil && !errors.Is(r.err, ErrConnectionLost) && !errors.Is(r.err, ErrNotDelivered) {
				t.Fatalf("call failed with %v", r.err)
			}
			if r.resp != nil {
				c.Release(r.resp.Blob)
			}
		case <-deadline:
			t.Fatal("call never returned")
		}
		select {
		case <-a.Ready():
		case <-deadline:
			t.Fatal("read-ahead run never ready")
		}
		resp, err := a.Result()
		if err == nil && resp != nil {
			for i := range resp.ReadAheadResults {
				a.Claim(i)
			}
		}
		a.Release()
		select {
		case <-c.Done():
		case <-deadline:
			t.Fatal("client not done after the stream ended")
		}
	})
}
