package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// malformedQGA returns the i-th bad qga input of a seeded mix: syntax
// errors, non-UTF-8, wrong types, unknown commands and members, top-level
// scalars, deep nesting, bad base64, oversized requests, truncated ones.
// complete is false for a truncated request, which the 0xFF of the next
// sync discards without a reply (as qemu-ga does).
func malformedQGA(r *rand.Rand, i int) (in string, complete bool) {
	switch i % 14 {
	case 0:
		return `{"execute":}`, true
	case 1:
		return "{\"execute\":\"guest-ping\",\"arguments\":{\"x\":\"\xc3\x28\"}}", true
	case 2:
		return fmt.Sprintf(`{"execute":%d}`, r.Intn(1000)), true
	case 3:
		return `{"execute":"guest-sync","arguments":{"id":"not a number"}}`, true
	case 4:
		return fmt.Sprintf(`{"execute":"no-such-%d"}`, r.Int()), true
	case 5:
		return `{"execute":"guest-ping","bogus":1}`, true
	case 6:
		return []string{`123`, `"str"`, `null`, `true`, `[1,2]`}[r.Intn(5)], true
	case 7:
		d := 1 + r.Intn(3000)
		return strings.Repeat("[", d) + strings.Repeat("]", d), true
	case 8:
		return `{"execute":"guest-file-write","arguments":{"handle":1,"buf-b64":"@@@not base64"}}`, true
	case 9:
		// Over the 256 KiB limit of the soak's channel.
		return `{"execute":"guest-ping","arguments":{"x":"` + strings.Repeat("y", 300<<10) + `"}}`, true
	case 10:
		return `{"execute":"guest-ping","arguments":[1]}`, true
	case 11:
		return `{"execute": null}`, true
	case 12:
		// Random bytes, none that opens a string or a nesting level: a
		// complete but invalid object. Bytes over 0x7f are invalid UTF-8
		// (0xFF, the resync byte, excluded).
		b := make([]byte, 1+r.Intn(64))
		for j := range b {
			for {
				c := byte(r.Intn(0xFF))
				if !strings.ContainsRune("\"{}[]\\\n", rune(c)) {
					b[j] = c
					break
				}
			}
		}
		return "{" + string(b) + "}", true
	default:
		return `{"execute":"guest-ping","arguments":{"a":`, false
	}
}

// malformedNova returns the i-th bad nova line.
func malformedNova(r *rand.Rand, i int) string {
	switch i % 8 {
	case 0:
		return `{"name":}`
	case 1:
		return "{\"name\":\"version\",\"value\":\"\xc3\x28\"}"
	case 2:
		return `{"value":"agent"}`
	case 3:
		return fmt.Sprintf(`{"name":%d}`, r.Intn(100))
	case 4:
		return fmt.Sprintf(`{"name":"no_such_%d","value":""}`, r.Int())
	case 5:
		return `{"name":"version","value":"agent"} trailing`
	case 6:
		return `{"name":"x","value":"` + strings.Repeat("z", 300<<10) + `"}`
	default:
		return `[]`
	}
}

// 10,000 malformed inputs on a qga channel and on a nova channel: each is
// answered with an error, the channel is in sync after each, and 6 s after
// the burst the agent's processes are back within 8 MiB of their idle
// memory (was: 38 -> 187 MiB, still held 150 s later).
func TestBadInputSoak(t *testing.T) {
	dir := harness.ShortTempDir(t)
	qgaSock, novaSock := dir+"/qga.sock", dir+"/nova.sock"
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Config: fmt.Sprintf(`
limits { max_request_bytes = 262144 }
channel "qga" {
  method  = "unix-listen"
  path    = %q
  dialect = "qga"
}
channel "nova" {
  method  = "unix-listen"
  path    = %q
  dialect = "nova"
}
`, qgaSock, novaSock)})
	harness.WaitForPing(t, qgaSock, 10*time.Second)
	q := harness.MustDial(t, qgaSock)
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := harness.Dial(novaSock); err == nil {
			c.Close()
			break
		} else if time.Now().After(end) {
			t.Fatalf("the nova channel never listened: %v", err)
		}
	}
	n := harness.MustDial(t, novaSock)
	// Start what the soak reaches, so idle means idle with those running.
	call(t, q, `{"execute":"guest-file-open","arguments":{"path":"/etc/hostname"}}`+"\n")
	call(t, n, `{"name":"version","value":"agent"}`+"\n")
	time.Sleep(6 * time.Second) // start-up garbage returned
	idle := agentRSSKiB(t, a)

	r := rand.New(rand.NewSource(9))
	start := time.Now()
	const count = 10000
	for i := 0; i < count/2; i++ {
		in, complete := malformedQGA(r, i)
		if complete {
			line := callWithin(t, q, in+"\n", 10*time.Second)
			if r, _ := harness.Decode(t, line); r.Error == nil || r.Error.Class == "" {
				t.Fatalf("qga input %d (%.80q): %q is not an error", i, in, line)
			}
		} else if _, err := q.Write([]byte(in + "\n")); err != nil {
			t.Fatalf("qga input %d: %v", i, err)
		}
		// In sync: the sync's reply is the next line.
		if dropped, _ := libvirtSync(t, q, i); len(dropped) != 0 {
			t.Fatalf("qga input %d (%.80q): more replies than one: %q", i, in, dropped)
		}
	}
	for i := 0; i < count/2; i++ {
		in := malformedNova(r, i)
		line := callWithin(t, n, in+"\n", 10*time.Second)
		var reply struct {
			Code    string `json:"returncode"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal([]byte(line), &reply); err != nil || reply.Code == "0" || reply.Code == "" {
			t.Fatalf("nova input %d (%.80q): %q", i, in, line)
		}
		if i%100 == 0 {
			line := callWithin(t, n, `{"name":"version","value":"agent"}`+"\n", 10*time.Second)
			if !strings.Contains(line, `"returncode":"0"`) {
				t.Fatalf("nova channel out of sync after input %d: %q", i, line)
			}
		}
	}
	took := time.Since(start)
	busy := agentRSSKiB(t, a)
	time.Sleep(6 * time.Second)
	after := agentRSSKiB(t, a)
	t.Logf("%d malformed inputs in %s; agent RSS idle %d KiB, right after %d KiB, 6 s later %d KiB", count, took.Round(time.Millisecond), idle, busy, after)
	if after > idle+8<<10 {
		t.Fatalf("the agent holds %d KiB more than idle 6 s after the bad input", after-idle)
	}
}
