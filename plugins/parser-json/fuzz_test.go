package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/engine"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
)

// Fuzz targets for the dialects' streams as a peer sees them: bytes written
// on a session of a real parser engine (the inbox, a handed-over socket,
// ServeStream), replies read back; and cost checks of each dialect's
// framing, which must be linear in the input.

// engineChannel is a parser engine serving one channel of a dialect, with
// an exchange's outbox to hand it stream sessions.
type engineChannel struct {
	engine *engine.Engine
	out    *session.Outbox
}

func newEngineChannel(t testing.TB, dialect string, maxRequest int64) *engineChannel {
	dir, err := os.MkdirTemp("", "pj") // short: inbox paths are capped at 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	e := engine.New("parser-json", dialects(), hclog.NewNullLogger(), nil)
	resp, err := e.Configure(context.Background(), &pb.ConfigureParserRequest{
		Channels:   []*pb.ChannelConfig{{Name: "c", Dialect: dialect}},
		Limits:     &pb.Limits{MaxRequestBytes: maxRequest, MaxSessions: 1 << 20},
		InboxDir:   dir,
		StateDir:   dir,
		RuntimeDir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := session.DialOutbox(resp.Inboxes[0].Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		out.Close()
		e.Close()
		os.RemoveAll(dir)
	})
	return &engineChannel{engine: e, out: out}
}

// session hands the parser a new stream session, writes input, ends the
// stream and returns everything the parser wrote until it closed.
func (c *engineChannel) session(t testing.TB, input []byte) []byte {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	local := os.NewFile(uintptr(fds[0]), "host")
	remote := os.NewFile(uintptr(fds[1]), "guest")
	conn, err := net.FileConn(local)
	local.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = c.out.Send(session.Event{Type: session.EventHandoff, Channel: "c", Session: "s", Kind: session.KindStream, Origin: "fuzz"}, remote)
	remote.Close()
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		_, _ = conn.Write(input)
		_ = conn.(*net.UnixConn).CloseWrite()
	}()
	replies, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading the replies to %d bytes: %v (after %d bytes of replies)", len(input), err, len(replies))
	}
	return replies
}

// syncMarker ends every qga input: whatever came before, the host's 0xFF
// and guest-sync-delimited get the channel back in step, and the sync's
// reply is the last one.
const (
	syncMarker = "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":424242}}"
	syncReply  = "\xff{\"return\": 424242}"
)

var qgaSeeds = []string{
	`{"execute":"guest-ping"}`,
	`{"execute":"guest-sync","arguments":{"id":123}}{"execute":"guest-ping","id":"x"}`,
	"{\"execute\":\"guest-info\"}\n{\"execute\":\"guest-ping\",\"id\":[1,\n2]}",
	`{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"QUJD"}}`,
	`{"execute":"guest-exec","arguments":{"path":"/bin/true","arg":["a"],"env":["A=b"],"input-data":"QQ=="}}`,
	`{"execute":null}{"execute":1}{"arguments":{}}{"execute":"x","bogus":1}{"execute":"x","arguments":[]}`,
	`{"execute":"guest-ping","execute":"guest-ping"}`,
	`[1,2]"str"12 true null {}`,
	"{\"execute\":\"guest-ping\",\"arguments\":{\"\xc3\"}}",
	"{\"execute\":\"guest-ping\"\xff{\"execute\":\"guest-ping\"}",
	`{"execute":"guest-ping","arguments":{"x":"` + strings.Repeat(`\\`, 64) + `"}}`,
	`{"execute":"guest-ping","arguments":{"x":"` + strings.Repeat(`\"`, 64) + `"}}`,
	strings.Repeat("[", 2000) + strings.Repeat("]", 2000),
	`{"execute":"guest-ping","id":"` + strings.Repeat("x", 5000) + `"}`,
	`{"execute":"guest-ping","arguments":{"unterminated`,
	`}}]]{"execute":"guest-ping"}`,
	"\x00\x01\x02",
}

// FuzzQGAStream: whatever a host writes on a qga session, every reply is one
// line ending in "\n" holding a JSON object with "return" or an "error"
// whose class and description are set; the channel stays usable: a 0xFF
// and guest-sync-delimited afterwards are answered, last.
func FuzzQGAStream(f *testing.F) {
	for _, s := range qgaSeeds {
		f.Add([]byte(s))
	}
	ch := newEngineChannel(f, "qga", 1<<20)
	f.Fuzz(func(t *testing.T, input []byte) {
		replies := ch.session(t, append(append([]byte(nil), input...), syncMarker...))
		if !bytes.HasSuffix(replies, []byte("\n")) {
			t.Fatalf("%q: replies do not end a line: %q", input, tail(replies))
		}
		lines := bytes.Split(replies[:len(replies)-1], []byte("\n"))
		if last := lines[len(lines)-1]; string(last) != syncReply {
			t.Fatalf("%q: the last reply is %q, want the sync's %q", input, last, syncReply)
		}
		for _, line := range lines {
			checkQGAReply(t, input, line)
		}
	})
}

func tail(b []byte) []byte { return b[max(0, len(b)-200):] }

// checkQGAReply checks one reply line (without its "\n").
func checkQGAReply(t *testing.T, input, line []byte) {
	t.Helper()
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class *string `json:"class"`
			Desc  *string `json:"desc"`
		} `json:"error"`
		ID json.RawMessage `json:"id"`
	}
	body := bytes.TrimPrefix(line, []byte{0xff})
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("%q: reply %q is not a JSON object: %v", input, line, err)
	}
	switch {
	case r.Return == nil && r.Error == nil:
		t.Fatalf("%q: reply %q has neither return nor error", input, line)
	case r.Return != nil && r.Error != nil:
		t.Fatalf("%q: reply %q has both return and error", input, line)
	case r.Error != nil && (r.Error.Class == nil || *r.Error.Class == "" || r.Error.Desc == nil):
		t.Fatalf("%q: error reply %q without class or description", input, line)
	}
}

// novaMarker ends every nova input: a line after whatever came before is
// answered, last.
const (
	novaMarker      = "\n{\"name\":\"marker-424242\",\"value\":\"\"}\n"
	novaMarkerReply = `{"returncode":"404","message":"No such agent command 'marker-424242'"}`
)

// FuzzNovaStream: whatever is written on a nova stream (one request per
// line), every line that is not blank gets exactly one reply, in order, each
// one line of {"returncode": non-empty string, "message": string}; a line
// over the request limit is answered too, and the stream goes on.
func FuzzNovaStream(f *testing.F) {
	for _, s := range []string{
		`{"name":"version","value":"agent"}`,
		"{\"name\":\"keyinit\",\"value\":\"12345\"}\n{\"name\":\"password\",\"value\":\"QUJD\"}\n",
		`{"name":"resetnetwork","value":""}` + "\n\n  \n" + `{"name":"injectfile","value":"L2V0Yy9ob3N0bmFtZSxoZWxsbw=="}`,
		`{"name":5}` + "\n" + `[]` + "\n" + `{"value":"x"}` + "\n" + `{"name":"x"} trailing`,
		"{\"name\":\"\xff\"}\n\r\n\x00\n",
		`{"name":"x","value":"` + strings.Repeat("y", 5000) + `"}`, // over the 4 KiB limit set below
		strings.Repeat(`{"name":"v"}`+"\n", 50),
		"\u0085{\"name\":\"v\"}\u00a0\n", // whitespace beyond ASCII
	} {
		f.Add([]byte(s))
	}
	const limit = 4096
	ch := newEngineChannel(f, "nova", limit)
	f.Fuzz(func(t *testing.T, input []byte) {
		all := append(append([]byte(nil), input...), novaMarker...)
		want := 0
		for _, line := range bytes.Split(all, []byte("\n")) {
			if len(bytes.TrimSpace(line)) > 0 || len(line)+1 > limit {
				want++
			}
		}
		replies := ch.session(t, all)
		if !bytes.HasSuffix(replies, []byte("\n")) {
			t.Fatalf("%q: replies do not end a line: %q", input, tail(replies))
		}
		lines := bytes.Split(replies[:len(replies)-1], []byte("\n"))
		if len(lines) != want {
			t.Fatalf("%q: %d replies to %d requests", input, len(lines), want)
		}
		if last := string(lines[len(lines)-1]); last != novaMarkerReply {
			t.Fatalf("%q: the last reply is %q, want %q", input, last, novaMarkerReply)
		}
		for _, line := range lines {
			var r struct {
				ReturnCode *string `json:"returncode"`
				Message    *string `json:"message"`
			}
			if err := json.Unmarshal(line, &r); err != nil || r.ReturnCode == nil || *r.ReturnCode == "" || r.Message == nil {
				t.Fatalf("%q: reply %q is not a nova reply (%v)", input, line, err)
			}
		}
	})
}

// Cost checks. Each dialect's framing must cost time linear in its input:
// a quadratic scan (rescanning the rest of the buffer at every escape)
// turned 1 MiB of "\\" into seconds of parser CPU, and one parser serves
// every channel. An input of N bytes is measured against the same pattern
// at 4N: linear work costs about 4 times as much, quadratic 16.

const (
	costBase  = 128 << 10
	costScale = 4
	// costMaxRatio is where a ratio is suspect (linear: 4, quadratic: 16),
	// costSureRatio where it fails without being measured again.
	costMaxRatio  = 8.0
	costSureRatio = 12.0
)

// cpuNow is the CPU time the process used so far, every goroutine (and the
// garbage collector) included, other processes not.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bestCPU runs fn runs times and returns its cheapest run.
func bestCPU(runs int, fn func()) time.Duration {
	best := time.Duration(1<<63 - 1)
	for range runs {
		runtime.GC()
		start := cpuNow()
		fn()
		best = min(best, cpuNow()-start)
	}
	return best
}

// checkLinear fails when work on an input built of prefix and unit
// repeated to costScale times costBase bytes costs more than costMaxRatio
// times the work on costBase bytes.
func checkLinear(t *testing.T, name string, prefix, unit []byte, work func(input []byte)) {
	t.Helper()
	if msg, ok := measureLinear(costBase, prefix, unit, work); !ok {
		t.Fatalf("%s: %s", name, msg)
	}
}

// measureLinear compares the cost of work on inputs of base and
// costScale*base bytes. A suspect ratio is measured again, longer, before
// it counts: the machine is shared.
func measureLinear(base int, prefix, unit []byte, work func(input []byte)) (string, bool) {
	if len(unit) == 0 {
		return "", true
	}
	build := func(size int) []byte {
		b := make([]byte, 0, size+len(unit))
		b = append(b, prefix...)
		for len(b) < size {
			b = append(b, unit...)
		}
		return b
	}
	small, large := build(base), build(base*costScale)
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var ratio float64
	var a, b time.Duration
	for _, runs := range []int{3, 9} {
		a, b = bestCPU(runs, func() { work(small) }), bestCPU(runs, func() { work(large) })
		// A run too short to measure counts as one millisecond.
		ratio = float64(b) / float64(max(a, time.Millisecond))
		if ratio <= costMaxRatio {
			return "", true
		}
		if ratio > costSureRatio {
			break
		}
	}
	return fmt.Sprintf("%d bytes cost %v, %d bytes %v: %.1f times for %d times the input (prefix %q, unit %q)",
		len(small), a, len(large), b, ratio, costScale, prefix, unit), false
}

// costSeeds are the inputs each framing is measured on: the escapes that
// were quadratic, and every other shape a scan could stumble on.
var costSeeds = []struct{ prefix, unit string }{
	{`{"execute":"guest-ping","arguments":{"x":"`, `\\`},
	{`{"execute":"guest-ping","arguments":{"x":"`, `\"`},
	{`{"execute":"guest-ping","arguments":{"x":"`, `\u00e9`},
	{`{"execute":"guest-ping","arguments":{"x":"`, `a\\`},
	{`{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"`, `QUJD`},
	{`{"execute":"guest-ping","arguments":{"x":"`, "\xc3\xa9"},
	{``, `{"execute":"guest-ping"}`},
	{``, `{}`},
	{``, `"\\"`},
	{``, `[`},
	{`{"a":`, `[`},
	{`{"execute":"guest-ping","arguments":{`, `"a":"b",`},
	{``, "\xff{"},
	{``, "\xff"},
	{``, `1`},
	{``, " "},
	{``, "\n"},
	{``, `{"name":"version","value":"agent"}` + "\n"},
	{`{"name":"x","value":"`, `\\`},
	{`{"name":"x","value":"`, `\u00e9`},
	{`{"name":"x","value":`, `[`},
	{`{"name":"x","value":"`, `y`},
}

// FuzzQGACost: the qga splitter and the decoding and reply of every request
// it emits cost linear time in the input, whatever the pattern repeated.
// The input is fed at once: a scan that is quadratic within one read would
// look linear over reads of a fixed size, yet cost the parser seconds per
// megabyte at ServeStream's 256 KiB reads.
func FuzzQGACost(f *testing.F) {
	for _, s := range costSeeds {
		f.Add([]byte(s.prefix), []byte(s.unit))
	}
	q := &qgaDialect{}
	f.Fuzz(func(t *testing.T, prefix, unit []byte) {
		checkLinear(t, "qga", prefix, unit, func(input []byte) {
			sp := &splitter{max: 64 << 20}
			sp.feed(input, func(v []byte, _ bool, problem string) {
				if problem == "" {
					q.HandleMessage(context.Background(), echoDispatcher{}, v)
				}
			})
		})
	})
}

// FuzzNovaCost: a nova stream (lines through serveLines and the dialect,
// on a real parser engine) costs linear time in its input.
func FuzzNovaCost(f *testing.F) {
	for _, s := range costSeeds {
		f.Add([]byte(s.prefix), []byte(s.unit))
	}
	ch := newEngineChannel(f, "nova", 64<<20)
	f.Fuzz(func(t *testing.T, prefix, unit []byte) {
		checkLinear(t, "nova", prefix, unit, func(input []byte) {
			ch.session(t, input)
		})
	})
}

// TestCostCheckCatchesQuadratic makes sure the cost check fails on what it
// exists for: a scan that looks at the rest of the input at every byte.
func TestCostCheckCatchesQuadratic(t *testing.T) {
	sink := 0
	quadratic := func(input []byte) {
		for i := range input {
			for _, c := range input[i:] {
				if c == 0xfe {
					sink++
				}
			}
		}
	}
	if _, ok := measureLinear(4<<10, nil, []byte("x"), quadratic); ok {
		t.Fatal("the cost check passed a quadratic scan")
	}
	if msg, ok := measureLinear(4<<10, nil, []byte("x"), func(input []byte) { quadratic(input[:1024]) }); !ok {
		t.Fatalf("the cost check failed work that does not grow: %s", msg)
	}
	if sink != 0 {
		t.Fatal(sink)
	}
}
