package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// Read-ahead (shared/engine/readahead.go) runs guest-file-read before the host
// asks. These tests hold it to qemu-ga's semantics from the host's side:
// every read returns the bytes at the position the host's own requests left,
// whatever it does between reads, from one session or several; and they look
// at the file position inside cmd-files (/proc/<pid>/fdinfo) to see that the
// read-ahead really happens and is really undone.

type readReply struct {
	Count  int    `json:"count"`
	BufB64 string `json:"buf-b64"`
	EOF    bool   `json:"eof"`
}

func readChunk(t *testing.T, c *harness.Conn, h int64, count int) readReply {
	t.Helper()
	var r readReply
	decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d}}`, h, count)), &r)
	return r
}

func chunkBytes(t *testing.T, r readReply) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(r.BufB64)
	if err != nil || len(b) != r.Count {
		t.Fatalf("buf-b64 of %d bytes for count %d: %v", len(b), r.Count, err)
	}
	return b
}

// expectBytes reads count bytes and checks they are data[off:off+count].
func expectBytes(t *testing.T, c *harness.Conn, h int64, data []byte, off, count int) {
	t.Helper()
	got := chunkBytes(t, readChunk(t, c, h, count))
	want := data[off:min(off+count, len(data))]
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d at %d: got %d bytes that differ from the file's", count, off, len(got))
	}
}

func writeTestFile(t *testing.T, n int) (string, []byte) {
	t.Helper()
	data := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(data)
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// fdPosition returns the file position of the descriptor cmd-files holds
// open on path.
func fdPosition(t *testing.T, a *harness.Agent, path string) int64 {
	t.Helper()
	pid := onePluginProc(t, a.Cmd.Process.Pid, "cmd-files")
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if target != path {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "pos:"); ok {
				pos, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				return pos
			}
		}
	}
	t.Fatalf("cmd-files (%d) has no descriptor on %s", pid, path)
	return 0
}

// waitPosition waits for cmd-files's position on path to be want (read-ahead
// batches arrive in the background).
func waitPosition(t *testing.T, a *harness.Agent, path string, want func(int64) bool, what string) int64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pos := fdPosition(t, a, path)
		if want(pos) {
			return pos
		}
		if time.Now().After(deadline) {
			t.Fatalf("cmd-files position %d: want %s", pos, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReadAheadIsExact(t *testing.T) {
	a := startAgent(t)
	path, data := writeTestFile(t, 3<<20+123)

	t.Run("whole file in chunks of every size", func(t *testing.T) {
		for _, count := range []int{1, 1000, 4096, 65536, 100000, 1 << 20} {
			c := harness.MustDial(t, a.Socket)
			h := openHandle(t, c, path, "r")
			var got []byte
			for {
				r := readChunk(t, c, h, count)
				got = append(got, chunkBytes(t, r)...)
				if r.EOF || r.Count == 0 {
					break
				}
				if count == 1 && len(got) == 20000 {
					break // a byte at a time: enough to cross many batches
				}
			}
			if !bytes.Equal(got, data[:len(got)]) || (count > 1 && len(got) != len(data)) {
				t.Fatalf("count %d: read %d bytes that differ from the file", count, len(got))
			}
			call(t, c, fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, h))
		}
	})

	t.Run("reads ahead and undoes it for a seek", func(t *testing.T) {
		c := harness.MustDial(t, a.Socket)
		h := openHandle(t, c, path, "r")
		for i := 0; i < 5; i++ {
			expectBytes(t, c, h, data, i*4096, 4096)
		}
		// The position inside cmd-files is past what the host read: the
		// reads ahead are real.
		waitPosition(t, a, path, func(p int64) bool { return p > 5*4096 }, "beyond 20480 (read ahead)")
		var s struct {
			Position int64 `json:"position"`
			EOF      bool  `json:"eof"`
		}
		decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-seek","arguments":{"handle":%d,"offset":0,"whence":"cur"}}`, h)), &s)
		if s.Position != 5*4096 {
			t.Fatalf("seek cur 0 after five 4 KiB reads: position %d, want 20480", s.Position)
		}
		expectBytes(t, c, h, data, 5*4096, 4096)
		decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-seek","arguments":{"handle":%d,"offset":-100,"whence":"end"}}`, h)), &s)
		expectBytes(t, c, h, data, len(data)-100, 4096)
	})

	t.Run("count changes between reads", func(t *testing.T) {
		c := harness.MustDial(t, a.Socket)
		h := openHandle(t, c, path, "r")
		off := 0
		for _, count := range []int{4096, 4096, 4096, 1000, 1000, 65536, 3, 65536, 65536, 4096} {
			expectBytes(t, c, h, data, off, count)
			off += count
		}
	})

	t.Run("write after reads lands where the host is", func(t *testing.T) {
		dir := t.TempDir()
		rw := filepath.Join(dir, "rw")
		if err := os.WriteFile(rw, data[:1<<20], 0o644); err != nil {
			t.Fatal(err)
		}
		c := harness.MustDial(t, a.Socket)
		h := openHandle(t, c, rw, "r+")
		for i := 0; i < 3; i++ {
			expectBytes(t, c, h, data, i*4096, 4096)
		}
		call(t, c, fmt.Sprintf(`{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":%q}}`, h, base64.StdEncoding.EncodeToString([]byte("XYZ"))))
		expectBytes(t, c, h, data, 3*4096+3, 4096)
		call(t, c, fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, h))
		got, _ := os.ReadFile(rw)
		if string(got[3*4096:3*4096+3]) != "XYZ" || !bytes.Equal(got[:3*4096], data[:3*4096]) || !bytes.Equal(got[3*4096+3:], data[3*4096+3:1<<20]) {
			t.Fatal("the write did not land right after the bytes the host had read")
		}
	})

	t.Run("two sessions share a handle", func(t *testing.T) {
		c1 := harness.MustDial(t, a.Socket)
		c2 := harness.MustDial(t, a.Socket)
		h := openHandle(t, c1, path, "r")
		off := 0
		for i := 0; i < 40; i++ {
			c := c1
			if i%3 == 2 {
				c = c2 // irregular turns: batches are given up and asked back
			}
			expectBytes(t, c, h, data, off, 4096)
			off += 4096
		}
	})

	t.Run("a session that ends leaves the position it reached", func(t *testing.T) {
		c1, err := harness.Dial(a.Socket)
		if err != nil {
			t.Fatal(err)
		}
		h := openHandle(t, c1, path, "r")
		for i := 0; i < 7; i++ {
			expectBytes(t, c1, h, data, i*65536, 65536)
		}
		c1.Close()
		// The batches of the closed session were given back (cmd-files
		// undoes them when the handle is next used).
		c2 := harness.MustDial(t, a.Socket)
		var s struct {
			Position int64 `json:"position"`
		}
		decodeReturn(t, call(t, c2, fmt.Sprintf(`{"execute":"guest-file-seek","arguments":{"handle":%d,"offset":0,"whence":"cur"}}`, h)), &s)
		if s.Position != 7*65536 {
			t.Fatalf("position %d after the session ended, want %d", s.Position, 7*65536)
		}
		expectBytes(t, c2, h, data, 7*65536, 65536)
	})

	t.Run("no data after close", func(t *testing.T) {
		c := harness.MustDial(t, a.Socket)
		h := openHandle(t, c, path, "r")
		expectBytes(t, c, h, data, 0, 4096)
		expectBytes(t, c, h, data, 4096, 4096)
		call(t, c, fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, h))
		expectError(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d,"count":4096}}`, h)),
			"GenericError", fmt.Sprintf("handle '%d' has not been found", h))
	})
}

// With read_ahead_max_bytes = -1 nothing is read before the host asks.
func TestReadAheadOff(t *testing.T) {
	a, sock := startAgentConfig(t, `
limits {
  read_ahead_max_bytes = -1
}`)
	path, data := writeTestFile(t, 1<<20)
	c := harness.MustDial(t, sock)
	h := openHandle(t, c, path, "r")
	for i := 0; i < 4; i++ {
		expectBytes(t, c, h, data, i*4096, 4096)
	}
	time.Sleep(50 * time.Millisecond)
	if pos := fdPosition(t, a, path); pos != 4*4096 {
		t.Fatalf("position %d with read-ahead off, want 16384", pos)
	}
}

// The parser killed while it holds reads ahead: nobody knows what its host
// received, so the handle refuses to go on (rather than skip or repeat
// data); it can still be closed, and the file opened again.
func TestReadAheadParserKilled(t *testing.T) {
	a := startAgent(t)
	path, data := writeTestFile(t, 1<<20)
	c := harness.MustDial(t, a.Socket)
	h := openHandle(t, c, path, "r")
	for i := 0; i < 3; i++ {
		expectBytes(t, c, h, data, i*4096, 4096)
	}
	waitPosition(t, a, path, func(p int64) bool { return p > 3*4096 }, "beyond 12288 (read ahead)")
	killAndReap(t, onePluginProc(t, a.Cmd.Process.Pid, "parser-json"))
	harness.WaitForPing(t, a.Socket, 10*time.Second)
	c2 := harness.MustDial(t, a.Socket)
	expectError(t, call(t, c2, fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d,"count":4096}}`, h)), "GenericError",
		fmt.Sprintf("handle '%d' lost its position: the agent's parser stopped while reading ahead on it; close the handle and open the file again", h))
	call(t, c2, fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, h))
	h2 := openHandle(t, c2, path, "r")
	expectBytes(t, c2, h2, data, 0, 4096)
}

// TestReadAheadRandomOperations runs a seeded random mix of reads (runs of
// the same count, so batches form), seeks, writes, reconnects and reopens
// from two sessions on one handle, and checks every reply against a model of
// the file and its position: whatever read-ahead does underneath, the host
// must see plain sequential file semantics.
func TestReadAheadRandomOperations(t *testing.T) {
	a := startAgent(t)
	path, initial := writeTestFile(t, 2<<20)
	model := append([]byte(nil), initial...)
	pos := 0
	rng := rand.New(rand.NewSource(42))

	conns := [2]*harness.Conn{harness.MustDial(t, a.Socket), harness.MustDial(t, a.Socket)}
	h := openHandle(t, conns[0], path, "r+")
	counts := []int{1, 100, 4096, 4096, 4096, 65536, 65536, 200000}
	for step := 0; step < 400; step++ {
		c := conns[0]
		if rng.Intn(10) < 3 {
			c = conns[1]
		}
		switch op := rng.Intn(100); {
		case op < 70: // a run of reads of one count
			count := counts[rng.Intn(len(counts))]
			for n := 1 + rng.Intn(6); n > 0; n-- {
				r := readChunk(t, c, h, count)
				end := min(pos+count, len(model))
				if got := chunkBytes(t, r); !bytes.Equal(got, model[pos:end]) {
					t.Fatalf("step %d: read %d at %d: %d bytes that differ from the model's %d", step, count, pos, len(got), end-pos)
				}
				if wantEOF := pos+count > len(model); r.EOF != wantEOF {
					t.Fatalf("step %d: read %d at %d of %d: eof %v", step, count, pos, len(model), r.EOF)
				}
				pos = end
			}
		case op < 82: // seek
			var offset int
			whence := []string{"set", "cur", "end"}[rng.Intn(3)]
			switch whence {
			case "set":
				offset = rng.Intn(len(model) + 1)
				pos = offset
			case "cur":
				offset = rng.Intn(len(model)+1) - pos
				pos += offset
			case "end":
				offset = -rng.Intn(len(model) + 1)
				pos = len(model) + offset
			}
			var s struct {
				Position int `json:"position"`
			}
			decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-seek","arguments":{"handle":%d,"offset":%d,"whence":%q}}`, h, offset, whence)), &s)
			if s.Position != pos {
				t.Fatalf("step %d: seek %s %d: position %d, model %d", step, whence, offset, s.Position, pos)
			}
		case op < 92: // write
			buf := make([]byte, 1+rng.Intn(5000))
			rng.Read(buf)
			var w struct {
				Count int `json:"count"`
			}
			decodeReturn(t, call(t, c, fmt.Sprintf(`{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":%q}}`, h, base64.StdEncoding.EncodeToString(buf))), &w)
			if w.Count != len(buf) {
				t.Fatalf("step %d: wrote %d of %d", step, w.Count, len(buf))
			}
			if pos+len(buf) > len(model) {
				model = append(model, make([]byte, pos+len(buf)-len(model))...)
			}
			copy(model[pos:], buf)
			pos += len(buf)
		case op < 97: // the host reconnects
			i := rng.Intn(2)
			conns[i].Close()
			conns[i] = harness.MustDial(t, a.Socket)
		default: // close and open again
			call(t, c, fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, h))
			h = openHandle(t, c, path, "r+")
			pos = 0
		}
	}
	call(t, conns[0], fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, h))
	if got, _ := os.ReadFile(path); !bytes.Equal(got, model) {
		t.Fatalf("the file (%d bytes) differs from the model (%d bytes)", len(got), len(model))
	}
}
