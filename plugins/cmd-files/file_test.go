package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The error texts below are those the real qemu-ga (Debian's 7.2) answers
// to the same requests.
func TestErrorTexts(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.txt")
	if err := os.WriteFile(path, []byte("hello world\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newTestPlugin(t, t.TempDir(), "")
	id := openHandle(t, f, path, "r")
	if id != 1000 {
		t.Fatalf("first handle %d, want 1000", id)
	}
	h := func(format string, a ...any) string {
		return fmt.Sprintf(format, append([]any{id}, a...)...)
	}
	cases := []struct{ cmd, args, desc string }{
		{"guest-file-read", h(`{"handle":%d,"count":-1}`), "value '-1' is invalid for argument count"},
		{"guest-file-read", h(`{"handle":%d,"count":50331649}`), "value '50331649' is invalid for argument count"},
		{"guest-file-read", h(`{"handle":%d,"count":9223372036854775807}`), "value '9223372036854775807' is invalid for argument count"},
		{"guest-file-read", h(`{"handle":%d,"count":9223372036854775808}`), "Invalid parameter type for 'count', expected: integer"},
		{"guest-file-read", h(`{"handle":%d,"count":"5"}`), "Invalid parameter type for 'count', expected: integer"},
		{"guest-file-read", h(`{"handle":%d,"count":1.5}`), "Invalid parameter type for 'count', expected: integer"},
		{"guest-file-read", h(`{"handle":%d,"count":1e3}`), "Invalid parameter type for 'count', expected: integer"},
		{"guest-file-read", `{"handle":99}`, "handle '99' has not been found"},
		{"guest-file-read", `{"handle":99,"count":-1}`, "handle '99' has not been found"},
		{"guest-file-read", `{}`, "Parameter 'handle' is missing"},
		{"guest-file-seek", h(`{"handle":%d,"offset":2,"whence":"foo"}`), "Parameter 'whence' does not accept value 'foo'"},
		{"guest-file-seek", `{"handle":99,"offset":2,"whence":"foo"}`, "Parameter 'whence' does not accept value 'foo'"},
		{"guest-file-seek", h(`{"handle":%d,"offset":2,"whence":"SET"}`), "Parameter 'whence' does not accept value 'SET'"},
		{"guest-file-seek", h(`{"handle":%d,"offset":2,"whence":5}`), "invalid whence code 5"},
		{"guest-file-seek", h(`{"handle":%d,"offset":2,"whence":-1}`), "invalid whence code -1"},
		{"guest-file-seek", h(`{"handle":%d,"offset":2,"whence":2.0}`), "Invalid parameter type for 'whence', expected: integer"},
		{"guest-file-seek", h(`{"handle":%d,"offset":2,"whence":true}`), "Invalid parameter type for 'whence', expected: GuestFileWhence"},
		{"guest-file-seek", h(`{"handle":%d,"offset":-20,"whence":0}`), "failed to seek file: Invalid argument"},
		{"guest-file-seek", h(`{"handle":%d,"offset":1}`), "Parameter 'whence' is missing"},
		{"guest-file-write", h(`{"handle":%d}`), "failed to write to file: Bad file descriptor"},
		{"guest-file-open", fmt.Sprintf(`{"path":%q,"mode":"x"}`, path), "invalid file open mode 'x'"},
		{"guest-file-open", fmt.Sprintf(`{"path":%q,"mode":"br"}`, path), "invalid file open mode 'br'"},
		{"guest-file-open", fmt.Sprintf(`{"path":%q,"mode":""}`, path), "invalid file open mode ''"},
		{"guest-file-open", fmt.Sprintf(`{"path":%q,"mode":"w"}`, dir+"/nonexist/a"), "failed to open file '" + dir + "/nonexist/a' (mode: 'w'): No such file or directory"},
		{"guest-file-open", fmt.Sprintf(`{"path":%q}`, dir+"/none"), "failed to open file '" + dir + "/none' (mode: 'r'): No such file or directory"},
		{"guest-file-open", `{"path":""}`, "failed to open file '' (mode: 'r'): No such file or directory"},
		{"guest-file-open", fmt.Sprintf(`{"path":%q,"mode":"w"}`, dir), "failed to open file '" + dir + "' (mode: 'w'): Is a directory"},
		{"guest-file-open", fmt.Sprintf(`{"path":%q,"extra":1}`, path), "Parameter 'extra' is unexpected"},
		{"guest-file-open", `{"path":5}`, "Invalid parameter type for 'path', expected: string"},
		{"guest-file-close", `{"handle":"x"}`, "Invalid parameter type for 'handle', expected: integer"},
		{"guest-file-flush", `{"handle":4242}`, "handle '4242' has not been found"},
	}
	for _, c := range cases {
		fails(t, f, c.cmd, c.args, []byte("hello"), c.desc)
	}
	// A failed open does not use up a handle number (qemu-ga takes the
	// number only once the file is open).
	if got := openHandle(t, f, path, "r"); got != 1001 {
		t.Fatalf("handle after failed opens %d, want 1001", got)
	}

	// A directory opens for reading, as with fopen; reading it fails.
	d := openHandle(t, f, dir, "r")
	fails(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, d), nil, "failed to read file: Is a directory")

	// write: count larger than the data, negative, or absent data.
	w := openHandle(t, f, path, "r+")
	fails(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d,"count":6}`, w), []byte("hello"), "value '6' is invalid for argument count")
	fails(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d,"count":-1}`, w), []byte("hello"), "value '-1' is invalid for argument count")
	fails(t, f, "guest-file-write", `{"handle":99,"count":-1}`, []byte("hello"), "handle '99' has not been found")
	fails(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d,"buf-b64":"aGV$bG8="}`, w), nil, "Base64 data contains invalid characters")

	ok(t, f, "guest-file-close", fmt.Sprintf(`{"handle":%d}`, id), nil)
	fails(t, f, "guest-file-close", fmt.Sprintf(`{"handle":%d}`, id), nil, fmt.Sprintf("handle '%d' has not been found", id))
	fails(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, id), nil, fmt.Sprintf("handle '%d' has not been found", id))
}

// Mirrors what qemu-ga answered for a sequence of reads, writes and seeks.
func TestReadWriteSeekSemantics(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "new1")
	f := newTestPlugin(t, t.TempDir(), "")

	h := openHandle(t, f, path, "w+b")
	r := ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d}`, h), helloworld)
	checkObject(t, r, map[string]any{"count": float64(14), "eof": false})
	checkRead(t, ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, h), nil), nil, true)

	seek := func(off int64, whence string) map[string]any {
		return ok(t, f, "guest-file-seek", fmt.Sprintf(`{"handle":%d,"offset":%d,"whence":%s}`, h, off, whence), nil).object(t)
	}
	if m := seek(0, `"set"`); m["position"] != float64(0) || m["eof"] != false {
		t.Fatalf("seek set 0: %v", m)
	}
	// Exactly the bytes left: no end of file met yet.
	checkRead(t, ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":14}`, h), nil), helloworld, false)
	checkRead(t, ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":14}`, h), nil), nil, true)
	seek(0, "0")
	checkRead(t, ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":15}`, h), nil), helloworld, true)
	// count 0 reads nothing and does not look for the end.
	checkRead(t, ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":0}`, h), nil), nil, false)
	if m := seek(0, `"end"`); m["position"] != float64(14) {
		t.Fatalf("seek end: %v", m)
	}
	if m := seek(-3, "2"); m["position"] != float64(11) {
		t.Fatalf("seek end-3: %v", m)
	}
	if m := seek(1, `"cur"`); m["position"] != float64(12) {
		t.Fatalf("seek cur+1: %v", m)
	}
	if m := seek(100, "0"); m["position"] != float64(100) || m["eof"] != false {
		t.Fatalf("seek past the end: %v", m)
	}
	checkRead(t, ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, h), nil), nil, true)

	// a+: reads start at the beginning, writes go to the end.
	a := openHandle(t, f, path, "a+")
	checkRead(t, ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":3}`, a), nil), helloworld[:3], false)
	ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d}`, a), []byte("ABC"))
	r = ok(t, f, "guest-file-seek", fmt.Sprintf(`{"handle":%d,"offset":0,"whence":"cur"}`, a), nil)
	checkObject(t, r, map[string]any{"position": float64(17), "eof": false})

	// write with count writes a prefix; an empty write is fine.
	rw := openHandle(t, f, path, "r+")
	checkObject(t, ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d,"count":2}`, rw), []byte("hello")), map[string]any{"count": float64(2), "eof": false})
	checkObject(t, ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d,"count":0}`, rw), []byte{}), map[string]any{"count": float64(0), "eof": false})
	checkObject(t, ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d,"buf-b64":"aGVsbG8="}`, rw), nil), map[string]any{"count": float64(5), "eof": false})
	got, _ := os.ReadFile(path)
	if want := "hehelloorld!\n\x00ABC"; string(got) != want {
		t.Fatalf("file holds %q, want %q", got, want)
	}

	// w truncates an existing file.
	openHandle(t, f, path, "wb")
	if st, _ := os.Stat(path); st.Size() != 0 {
		t.Fatalf("size after w: %d", st.Size())
	}
}

func TestNewFileMode(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	f := newTestPlugin(t, t.TempDir(), "")
	for _, mode := range []string{"w", "wb", "a", "ab", "w+", "wb+", "w+b", "a+", "ab+", "a+b"} {
		p := filepath.Join(dir, "new-"+strings.ReplaceAll(mode, "+", "plus"))
		openHandle(t, f, p, mode)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		// qemu-ga fchmods new files to 0666 whatever the umask.
		if st.Mode().Perm() != 0o666 {
			t.Fatalf("mode %s created %v, want -rw-rw-rw-", mode, st.Mode().Perm())
		}
	}
	// An existing file keeps its permissions.
	p := filepath.Join(dir, "existing")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	openHandle(t, f, p, "w")
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("existing file's mode changed to %v", st.Mode().Perm())
	}
	for _, mode := range []string{"r", "rb", "r+", "rb+", "r+b"} {
		fails(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q,"mode":%q}`, dir+"/absent", mode), nil,
			fmt.Sprintf("failed to open file '%s/absent' (mode: '%s'): No such file or directory", dir, mode))
	}
}

// Handle numbers continue across a restart of the plugin (a new instance
// on the same state directory), and a handle of the old instance is stale.
func TestHandlesSurviveRestart(t *testing.T) {
	state := t.TempDir()
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	f1 := newTestPlugin(t, state, "")
	h1 := openHandle(t, f1, path, "r")
	h2 := openHandle(t, f1, path, "r")
	if h1 != 1000 || h2 != 1001 {
		t.Fatalf("handles %d, %d; want 1000, 1001", h1, h2)
	}
	b, err := os.ReadFile(filepath.Join(state, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	// The same key file as qemu-ga's qga.state.
	if string(b) != "[global]\nfd_counter=1002\n" {
		t.Fatalf("state file %q", b)
	}
	// Restart: the process ends, so its files are closed.
	f1.closeAll()

	f2 := newTestPlugin(t, state, "")
	for _, h := range []int64{h1, h2} {
		fails(t, f2, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, h), nil, fmt.Sprintf("handle '%d' has not been found", h))
		fails(t, f2, "guest-file-close", fmt.Sprintf(`{"handle":%d}`, h), nil, fmt.Sprintf("handle '%d' has not been found", h))
	}
	h3 := openHandle(t, f2, path, "r")
	if h3 != 1002 {
		t.Fatalf("first handle after restart %d, want 1002", h3)
	}
	checkRead(t, ok(t, f2, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, h3), nil), []byte("data"), true)

	// A state file written by qemu-ga itself is taken over.
	state2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(state2, stateFile), []byte("[global]\nfd_counter=5000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f3 := newTestPlugin(t, state2, "")
	if h := openHandle(t, f3, path, "r"); h != 5000 {
		t.Fatalf("handle from qemu-ga's counter %d, want 5000", h)
	}

	// A corrupt counter stops the plugin rather than reuse numbers.
	state3 := t.TempDir()
	if err := os.WriteFile(filepath.Join(state3, stateFile), []byte("[global]\nfd_counter=x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := newFilesPlugin().p.Configure(sdkConfig(state3, "")); err == nil {
		t.Fatal("configure accepted a corrupt handle counter")
	}
}

func TestHandleCounterWriteFailure(t *testing.T) {
	// root ignores directory permissions, so the state directory
	// disappears instead.
	state := t.TempDir()
	f := newTestPlugin(t, state, "")
	path := filepath.Join(t.TempDir(), "f")
	openHandle(t, f, path, "w")
	if err := os.RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	fails(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q}`, path), nil, "failed to commit persistent state to disk")
	if n := f.handles.count(); n != 1 {
		t.Fatalf("%d handles open after a failed commit, want 1", n)
	}
}

func TestMaxHandles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f := newTestPlugin(t, t.TempDir(), `{"max_handles": 3}`)
	var hs []int64
	for range 3 {
		hs = append(hs, openHandle(t, f, path, "r"))
	}
	want := fmt.Sprintf("failed to open file '%s' (mode: 'w'): too many open handles (max_handles is 3)", dir+"/new")
	fails(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q,"mode":"w"}`, dir+"/new"), nil, want)
	if _, err := os.Stat(dir + "/new"); !os.IsNotExist(err) {
		t.Fatalf("an open over the limit created the file: %v", err)
	}
	ok(t, f, "guest-file-close", fmt.Sprintf(`{"handle":%d}`, hs[0]), nil)
	openHandle(t, f, path, "r")

	// Concurrent opens never exceed the limit.
	f2 := newTestPlugin(t, t.TempDir(), `{"max_handles": 5}`)
	var wg sync.WaitGroup
	var mu sync.Mutex
	opened := 0
	for range 50 {
		wg.Go(func() {
			r := run(t, f2, "guest-file-open", fmt.Sprintf(`{"path":%q}`, path), nil)
			if r.err == nil {
				mu.Lock()
				opened++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if opened != 5 || f2.handles.count() != 5 {
		t.Fatalf("%d opens succeeded (%d handles), want 5", opened, f2.handles.count())
	}

	// The default limit, and 0 for none.
	f3 := newTestPlugin(t, t.TempDir(), "")
	if f3.handles.max != defaultMaxHandles {
		t.Fatalf("default max_handles %d", f3.handles.max)
	}
	f4 := newTestPlugin(t, t.TempDir(), `{"max_handles": 0}`)
	for range defaultMaxHandles + 10 {
		openHandle(t, f4, path, "r")
	}
	if err := newFilesPlugin().p.Configure(sdkConfig(t.TempDir(), `{"max_handles": -1}`)); err == nil {
		t.Fatal("negative max_handles accepted")
	}
}

func TestAllowedPaths(t *testing.T) {
	base := t.TempDir()
	allowed := filepath.Join(base, "allowed")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{allowed + "/sub", outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(allowed+"/in.txt", "inside")
	mustWrite(outside+"/secret", "secret")
	mustLink := func(target, link string) {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	mustLink(outside+"/secret", allowed+"/link-out")            // to a file outside
	mustLink(outside, allowed+"/dir-out")                       // to a directory outside
	mustLink(outside+"/created", allowed+"/dangling-out")       // dangling, outside
	mustLink("in.txt", allowed+"/sub/../link-in")               // relative, inside
	mustLink(allowed+"/sub", base+"/alias")                     // a way in from outside
	mustLink("../../outside/secret", allowed+"/sub/rel-escape") // relative escape
	// A prefix given through a symlink is resolved.
	mustLink(allowed, base+"/allowed-link")
	f := newTestPlugin(t, t.TempDir(), fmt.Sprintf(`{"allowed_paths": [%q]}`, base+"/allowed-link"))

	refused := func(path, mode string) {
		t.Helper()
		fails(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q,"mode":%q}`, path, mode), nil,
			fmt.Sprintf("failed to open file '%s' (mode: '%s'): the path is outside the allowed paths (%s)", path, mode, allowed))
	}
	refused(outside+"/secret", "r")
	refused(allowed+"/../outside/secret", "r")
	refused(allowed+"/sub/../../outside/secret", "r")
	refused(allowed+"/link-out", "r")
	refused(allowed+"/dir-out/secret", "r")
	refused(allowed+"/sub/rel-escape", "r")
	refused(allowed+"/dangling-out", "w")
	refused(allowed+"/dir-out/new", "w")
	refused(base+"/allowedx", "w") // a sibling sharing the prefix's name
	refused("/etc/passwd", "r")
	if _, err := os.Stat(outside + "/created"); !os.IsNotExist(err) {
		t.Fatal("a dangling symlink created a file outside")
	}
	if _, err := os.Stat(outside + "/new"); !os.IsNotExist(err) {
		t.Fatal("a write through a symlinked directory created a file outside")
	}

	read := func(h int64) string {
		r := ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, h), nil)
		return string(r.blob)
	}
	if s := read(openHandle(t, f, allowed+"/in.txt", "r")); s != "inside" {
		t.Fatalf("read %q", s)
	}
	if s := read(openHandle(t, f, allowed+"/link-in", "r")); s != "inside" {
		t.Fatalf("read through inside symlink %q", s)
	}
	if s := read(openHandle(t, f, base+"/allowed-link/sub/../in.txt", "r")); s != "inside" {
		t.Fatalf("read through .. %q", s)
	}
	openHandle(t, f, base+"/alias/new.txt", "w")
	if _, err := os.Stat(allowed + "/sub/new.txt"); err != nil {
		t.Fatalf("create through a symlink into the allowed tree: %v", err)
	}
	// Relative paths resolve against the working directory.
	t.Chdir(allowed)
	if s := read(openHandle(t, f, "sub/../in.txt", "r")); s != "inside" {
		t.Fatalf("relative read %q", s)
	}
	refused("../outside/secret", "r")
	openHandle(t, f, allowed, "r") // the prefix itself

	if err := newFilesPlugin().p.Configure(sdkConfig(t.TempDir(), `{"allowed_paths": ["relative/dir"]}`)); err == nil {
		t.Fatal("relative allowed_paths accepted")
	}
}

// A named pipe opens non-blocking as in qemu-ga: reading an empty pipe
// fails at once instead of hanging the command.
func TestFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	f := newTestPlugin(t, t.TempDir(), "")
	r := openHandle(t, f, p, "r")
	w := openHandle(t, f, p, "w")
	start := time.Now()
	fails(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, r), nil, "failed to read file: Resource temporarily unavailable")
	if time.Since(start) > time.Second {
		t.Fatal("reading an empty FIFO blocked")
	}
	ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d}`, w), []byte("ping"))
	checkRead(t, ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":10}`, r), nil), []byte("ping"), false)
	fails(t, f, "guest-file-seek", fmt.Sprintf(`{"handle":%d,"offset":0,"whence":0}`, r), nil, "failed to seek file: Illegal seek")
	// Filling the pipe: the write reports what fit.
	big := make([]byte, 1<<20)
	res := ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d}`, w), big).object(t)
	if n := res["count"].(float64); n <= 0 || n >= float64(len(big)) {
		t.Fatalf("write to a full pipe reported %v bytes", n)
	}
	fails(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d}`, w), big, "failed to write to file: Resource temporarily unavailable")
}

// Big transfers in the chunk sizes of the benchmark, checked byte for byte.
func TestLargeTransfers(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 8<<20+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	f := newTestPlugin(t, t.TempDir(), "")
	for _, chunk := range []int{4 << 10, 64 << 10, 1 << 20} {
		path := filepath.Join(dir, fmt.Sprintf("f%d", chunk))
		w := openHandle(t, f, path, "wb")
		for off := 0; off < len(data); off += chunk {
			part := data[off:min(off+chunk, len(data))]
			res := ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d}`, w), part).object(t)
			if res["count"] != float64(len(part)) {
				t.Fatalf("write count %v, want %d", res["count"], len(part))
			}
		}
		ok(t, f, "guest-file-close", fmt.Sprintf(`{"handle":%d}`, w), nil)

		r := openHandle(t, f, path, "rb")
		h := sha256.New()
		for {
			res := ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":%d}`, r, chunk), nil)
			m := res.object(t)
			if int(m["count"].(float64)) != len(res.blob) {
				t.Fatalf("count %v but %d bytes", m["count"], len(res.blob))
			}
			h.Write(res.blob)
			if m["eof"] == true {
				break
			}
		}
		if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("chunk %d: data read back differs", chunk)
		}
		ok(t, f, "guest-file-close", fmt.Sprintf(`{"handle":%d}`, r), nil)
	}

	// The largest read qemu-ga allows, of a small file: all of it, eof, and
	// a buffer sized to the file rather than to the count.
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, []byte("tiny"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := openHandle(t, f, small, "r")
	res := ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":%d}`, r, readCountMax), nil)
	checkRead(t, res, []byte("tiny"), true)
	if c := cap(res.blob); c > 4+readSlack {
		t.Fatalf("a 48 MiB read of a 4-byte file allocated %d bytes", c)
	}
	// A file that grows between reads is read on.
	ap, err := os.OpenFile(small, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	ap.Write(bytes.Repeat([]byte("x"), 100<<10))
	ap.Close()
	res = ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":%d}`, r, readCountMax), nil)
	if len(res.blob) != 100<<10 || res.object(t)["eof"] != true {
		t.Fatalf("read after growth: %d bytes, %s", len(res.blob), res.result)
	}
}

// Several hosts' transfers at once on separate handles (run with -race).
func TestConcurrentHandles(t *testing.T) {
	dir := t.TempDir()
	f := newTestPlugin(t, t.TempDir(), "")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			path := filepath.Join(dir, fmt.Sprintf("c%d", i))
			payload := bytes.Repeat([]byte{byte(i)}, 256<<10)
			args, _ := json.Marshal(map[string]string{"path": path, "mode": "w+"})
			res := run(t, f, "guest-file-open", string(args), nil)
			if res.err != nil {
				t.Errorf("open: %s", res.err.Desc)
				return
			}
			var h int64
			json.Unmarshal(res.result, &h)
			for range 4 {
				if r := run(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d}`, h), payload); r.err != nil {
					t.Errorf("write: %s", r.err.Desc)
				}
			}
			run(t, f, "guest-file-seek", fmt.Sprintf(`{"handle":%d,"offset":0,"whence":"set"}`, h), nil)
			total := 0
			for {
				r := run(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d,"count":65536}`, h), nil)
				if r.err != nil {
					t.Errorf("read: %s", r.err.Desc)
					return
				}
				if bytes.Count(r.blob, []byte{byte(i)}) != len(r.blob) {
					t.Errorf("handle %d read foreign bytes", h)
				}
				total += len(r.blob)
				if len(r.blob) == 0 {
					break
				}
			}
			if total != 4*len(payload) {
				t.Errorf("read %d bytes back, want %d", total, 4*len(payload))
			}
			run(t, f, "guest-file-close", fmt.Sprintf(`{"handle":%d}`, h), nil)
		})
	}
	// Closing a handle while it is in use is safe: later calls see it gone.
	path := filepath.Join(dir, "shared")
	h := openHandle(t, f, path, "w+")
	for range 4 {
		wg.Go(func() {
			for range 50 {
				r := run(t, f, "guest-file-write", fmt.Sprintf(`{"handle":%d}`, h), []byte("abc"))
				if r.err != nil && r.err.Desc != fmt.Sprintf("handle '%d' has not been found", h) {
					t.Errorf("write during close: %s", r.err.Desc)
				}
			}
		})
	}
	ok(t, f, "guest-file-close", fmt.Sprintf(`{"handle":%d}`, h), nil)
	wg.Wait()
	if n := f.handles.count(); n != 0 {
		t.Fatalf("%d handles left open", n)
	}
}

func TestStrerror(t *testing.T) {
	for errno, want := range map[syscall.Errno]string{
		unix.ENOENT: "No such file or directory",
		unix.EISDIR: "Is a directory",
		unix.EAGAIN: "Resource temporarily unavailable",
		unix.EROFS:  "Read-only file system",
		41:          "Unknown error 41",
		133:         "Memory page has hardware error",
	} {
		if got := strerror(errno); got != want {
			t.Errorf("strerror(%d) = %q, want %q", errno, got, want)
		}
	}
}

// The fallback for kernels without openat2 keeps the same confinement.
func TestOpenCheckedFallback(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "secret"), []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "in"), []byte("i"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base, "secret"), filepath.Join(root, "out")); err != nil {
		t.Fatal(err)
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd)
	r := &allowedRoot{path: root, real: root, fd: rfd}
	o := &opener{root: r, rel: "in"}
	fd, err := o.openChecked(unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open inside: %v", err)
	}
	unix.Close(fd)
	o = &opener{root: r, rel: "out"}
	if fd, err := o.openChecked(unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		unix.Close(fd)
		t.Fatal("the fallback followed a symlink out of the root")
	}
	o = &opener{root: r, rel: "."}
	fd, err = o.openChecked(unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open the root itself: %v", err)
	}
	unix.Close(fd)
}
