package vm

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"math/rand"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// checkFileCopy moves a file into the guest and back out over the real
// virtio-serial port, the way a host copies files with qemu-ga: writes, then
// reads of 16 KiB (which the agent reads ahead), with the host going away in
// the middle of the read and coming back to finish it. Not a byte may be
// skipped or repeated: the agent's read-ahead outlives the host's connection
// on the same port and stays exact.
func checkFileCopy(t *testing.T, vm *vmInstance) {
	data := make([]byte, 700<<10+17)
	rand.New(rand.NewSource(7)).Read(data)
	const path = "/tmp/copy-test"

	c := dialRetry(t, vm.socket)
	var h int64
	qga(t, c, "guest-file-open", map[string]any{"path": path, "mode": "w"}, &h)
	for off := 0; off < len(data); off += 64 << 10 {
		chunk := data[off:min(off+64<<10, len(data))]
		var w struct {
			Count int `json:"count"`
		}
		qga(t, c, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(chunk)}, &w)
		if w.Count != len(chunk) {
			t.Fatalf("write at %d: %d of %d bytes", off, w.Count, len(chunk))
		}
	}
	qga(t, c, "guest-file-close", map[string]any{"handle": h}, &struct{}{})

	qga(t, c, "guest-file-open", map[string]any{"path": path, "mode": "r"}, &h)
	var got []byte
	read := func(c *harness.Conn) bool {
		var r struct {
			Count  int    `json:"count"`
			BufB64 string `json:"buf-b64"`
			EOF    bool   `json:"eof"`
		}
		qga(t, c, "guest-file-read", map[string]any{"handle": h, "count": 16 << 10}, &r)
		b, err := base64.StdEncoding.DecodeString(r.BufB64)
		if err != nil || len(b) != r.Count {
			t.Fatalf("read: %d bytes for count %d: %v", len(b), r.Count, err)
		}
		got = append(got, b...)
		return r.EOF || r.Count == 0
	}
	for i := 0; i < 10; i++ {
		read(c)
	}
	// The host goes away with reads ahead in the agent, then comes back and
	// resynchronises as libvirt does.
	c.Close()
	time.Sleep(500 * time.Millisecond)
	c = dialRetry(t, vm.socket)
	defer c.Close()
	line, err := c.Call("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4242}}\n")
	if err != nil {
		t.Fatalf("resync: %v", err)
	}
	if r, _ := harness.Decode(t, line); string(r.Return) != "4242" {
		t.Fatalf("resync: %q", line)
	}
	for !read(c) {
	}
	qga(t, c, "guest-file-close", map[string]any{"handle": h}, &struct{}{})
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (sha256 %x), wrote %d (sha256 %x)", len(got), sha256.Sum256(got), len(data), sha256.Sum256(data))
	}
}
