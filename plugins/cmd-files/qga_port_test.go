package main

// Ports of test_qga_file_ops and test_qga_file_write_read from QEMU's
// tests/unit/test-qga.c, run against real files in a temporary directory
// (qemu-ga runs there with that directory as its working directory, so the
// tests use the relative path "foo").

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// helloworld is the C test's `const unsigned char helloworld[] = "Hello
// World!\n"` sent with sizeof, so with its terminating NUL.
var helloworld = []byte("Hello World!\n\x00")

func checkRead(t *testing.T, r reply, wantData []byte, wantEOF bool) {
	t.Helper()
	m := r.object(t)
	want := map[string]any{"count": float64(len(wantData)), "eof": wantEOF}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("read result %s, want count %d eof %v (buf-b64 travels as the blob)", r.result, len(wantData), wantEOF)
	}
	if got := b64(r.blob); got != b64(wantData) {
		t.Fatalf("read buf-b64 %q, want %q", got, b64(wantData))
	}
}

func checkObject(t *testing.T, r reply, want map[string]any) {
	t.Helper()
	if m := r.object(t); !reflect.DeepEqual(m, want) {
		t.Fatalf("result %s, want %v", r.result, want)
	}
}

func TestQGAFileOps(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	f := newTestPlugin(t, t.TempDir(), "")

	id := openHandle(t, f, "foo", "w+")
	enc := b64(helloworld)
	r := ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle": %d}`, id), helloworld)
	checkObject(t, r, map[string]any{"count": float64(len(helloworld)), "eof": false})
	ok(t, f, "guest-file-flush", fmt.Sprintf(`{"handle": %d}`, id), nil)
	r = ok(t, f, "guest-file-close", fmt.Sprintf(`{"handle": %d}`, id), nil)
	if string(r.result) != "{}" {
		t.Fatalf("guest-file-close returned %s, want {}", r.result)
	}

	// check content
	got, err := os.ReadFile(filepath.Join(dir, "foo"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(helloworld) {
		t.Fatalf("file holds %q, want %q", got, helloworld)
	}

	id = openHandle(t, f, "foo", "r")
	// read: all of it, and the end of the file was met
	r = ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle": %d}`, id), nil)
	checkRead(t, r, helloworld, true)
	if b64(r.blob) != enc {
		t.Fatalf("buf-b64 %q, want %q", b64(r.blob), enc)
	}
	// read eof
	r = ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle": %d}`, id), nil)
	checkRead(t, r, nil, true)
	// seek
	r = ok(t, f, "guest-file-seek", fmt.Sprintf(`{"handle": %d, "offset": %d, "whence": "set"}`, id, 6), nil)
	checkObject(t, r, map[string]any{"position": float64(6), "eof": false})
	// partial read
	r = ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle": %d}`, id), nil)
	checkRead(t, r, helloworld[6:], true)
	ok(t, f, "guest-file-close", fmt.Sprintf(`{"handle": %d}`, id), nil)
}

func TestQGAFileWriteRead(t *testing.T) {
	t.Chdir(t.TempDir())
	f := newTestPlugin(t, t.TempDir(), "")

	id := openHandle(t, f, "foo", "w+")
	r := ok(t, f, "guest-file-write", fmt.Sprintf(`{"handle": %d}`, id), helloworld)
	checkObject(t, r, map[string]any{"count": float64(len(helloworld)), "eof": false})
	// read (check implicit flush): the position is at the end
	r = ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle": %d}`, id), nil)
	checkRead(t, r, nil, true)
	// seek to 0
	r = ok(t, f, "guest-file-seek", fmt.Sprintf(`{"handle": %d, "offset": %d, "whence": "set"}`, id, 0), nil)
	checkObject(t, r, map[string]any{"position": float64(0), "eof": false})
	// read
	r = ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle": %d}`, id), nil)
	checkRead(t, r, helloworld, true)
	ok(t, f, "guest-file-close", fmt.Sprintf(`{"handle": %d}`, id), nil)
}
