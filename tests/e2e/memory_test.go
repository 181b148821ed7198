package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// rssKiB is a process's resident memory.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

// A file copy fills the parser's buffer pools with megabytes; seconds after
// the copy ends the parser is back near its idle size (not minutes later,
// when an idle Go process would next collect garbage).
func TestBulkMemoryReturned(t *testing.T) {
	a := startAgent(t)
	parser := onePluginProc(t, a.Cmd.Process.Pid, "parser-json")
	path, data := writeTestFile(t, 24<<20)
	c := harness.MustDial(t, a.Socket)
	idle := rssKiB(t, parser)

	h := openHandle(t, c, path, "r")
	for off := 0; off < len(data); off += 1 << 20 {
		expectBytes(t, c, h, data, off, 1<<20)
	}
	w := openHandle(t, c, path+".copy", "w")
	chunk := base64.StdEncoding.EncodeToString(data[:1<<20])
	for i := 0; i < 8; i++ {
		call(t, c, fmt.Sprintf(`{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":%q}}`, w, chunk))
	}
	busy := rssKiB(t, parser)
	deadline := time.Now().Add(20 * time.Second)
	for {
		now := rssKiB(t, parser)
		if now <= idle+3<<10 {
			t.Logf("parser RSS: idle %d KiB, after the copy %d KiB, %d KiB once it stopped", idle, busy, now)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("parser RSS %d KiB 20 s after the copy (idle %d KiB, during %d KiB)", now, idle, busy)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
