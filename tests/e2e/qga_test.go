package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

func startAgent(t *testing.T, args ...string) *harness.Agent {
	t.Helper()
	return harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Args: args})
}

// startAgentConfig starts an agent from an HCL configuration whose channel
// "qga" listens on the returned socket.
func startAgentConfig(t *testing.T, extra string) (*harness.Agent, string) {
	t.Helper()
	sock := harness.ShortTempDir(t) + "/qga.sock"
	a := harness.StartAgent(t, harness.Options{PluginDir: pluginDir, Config: fmt.Sprintf(`
channel "qga" {
  method  = "unix-listen"
  path    = %q
  dialect = "qga"
}
%s
`, sock, extra)})
	harness.WaitForPing(t, sock, 10*time.Second)
	return a, sock
}

// expectError checks an error reply's class and exact description.
func expectError(t *testing.T, line, class, desc string) {
	t.Helper()
	r, _ := harness.Decode(t, line)
	if r.Error == nil {
		t.Fatalf("want error %s %q, got %q", class, desc, line)
	}
	if r.Error.Class != class || (desc != "" && r.Error.Desc != desc) {
		t.Fatalf("want error %s %q, got %s %q", class, desc, r.Error.Class, r.Error.Desc)
	}
}

func call(t *testing.T, c *harness.Conn, req string) string {
	t.Helper()
	line, err := c.Call(req)
	if err != nil {
		t.Fatalf("%s: %v", req, err)
	}
	if !strings.HasSuffix(line, "\n") {
		t.Fatalf("reply %q does not end with a newline", line)
	}
	return line
}

func TestCoreProtocol(t *testing.T) {
	a := startAgent(t)
	c := harness.MustDial(t, a.Socket)

	t.Run("ping", func(t *testing.T) {
		r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-ping"}`))
		if string(r.Return) != "{}" || r.ID != nil {
			t.Fatalf("ping: %+v", r)
		}
	})
	t.Run("id echoed", func(t *testing.T) {
		r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-ping","id":{"a":[1,"x"]}}`))
		if string(r.ID) != `{"a":[1,"x"]}` {
			t.Fatalf("id not echoed: %s", r.ID)
		}
	})
	t.Run("sync", func(t *testing.T) {
		r, delim := harness.Decode(t, call(t, c, `{"execute":"guest-sync","arguments":{"id":123456}}`))
		if string(r.Return) != "123456" || delim {
			t.Fatalf("guest-sync: %+v delimited=%v", r, delim)
		}
	})
	t.Run("sync-delimited", func(t *testing.T) {
		r, delim := harness.Decode(t, call(t, c, `{"execute":"guest-sync-delimited","arguments":{"id":42}}`))
		if string(r.Return) != "42" || !delim {
			t.Fatalf("guest-sync-delimited: %+v delimited=%v", r, delim)
		}
	})
	t.Run("unknown command", func(t *testing.T) {
		expectError(t, call(t, c, `{"execute":"nope"}`), "CommandNotFound", "The command nope has not been found")
	})
	t.Run("unexpected parameter", func(t *testing.T) {
		expectError(t, call(t, c, `{"execute":"guest-ping","arguments":{"x":1}}`), "GenericError", "Parameter 'x' is unexpected")
	})
	t.Run("missing parameter", func(t *testing.T) {
		expectError(t, call(t, c, `{"execute":"guest-sync","arguments":{}}`), "GenericError", "Parameter 'id' is missing")
	})
	t.Run("wrong type", func(t *testing.T) {
		expectError(t, call(t, c, `{"execute":"guest-sync","arguments":{"id":"x"}}`), "GenericError", "Invalid parameter type for 'id', expected: integer")
	})
	t.Run("envelope errors", func(t *testing.T) {
		expectError(t, call(t, c, `{"foo":1}`), "GenericError", "QMP input member 'foo' is unexpected")
		expectError(t, call(t, c, `[1,2]`), "GenericError", "QMP input must be a JSON object")
		expectError(t, call(t, c, `"str"`), "GenericError", "QMP input must be a JSON object")
		expectError(t, call(t, c, `{"execute":5}`), "GenericError", "QMP input member 'execute' must be a string")
		expectError(t, call(t, c, `{"execute":"guest-ping","arguments":[]}`), "GenericError", "QMP input member 'arguments' must be an object")
		expectError(t, call(t, c, `{"execute":"guest-ping","execute":"guest-info"}`), "GenericError", "JSON parse error, duplicate key")
		expectError(t, call(t, c, `{"arguments":{}}`), "GenericError", "QMP input lacks member 'execute'")
	})
	t.Run("malformed JSON keeps the stream", func(t *testing.T) {
		line := call(t, c, `{bad json}`)
		expectError(t, line, "GenericError", "")
		if r, _ := harness.Decode(t, line); !strings.HasPrefix(r.Error.Desc, "JSON parse error") {
			t.Fatalf("desc %q", r.Error.Desc)
		}
		expectError(t, call(t, c, "{\"execute\":\"guest-ping\",\"id\":\"\xc3\x28\"}"), "GenericError", "JSON parse error, invalid UTF-8 sequence in string")
		r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-ping","id":7}`))
		if string(r.ID) != "7" {
			t.Fatalf("stream broken after bad input: %+v", r)
		}
	})
	t.Run("several requests in one write", func(t *testing.T) {
		first := call(t, c, `{"execute":"guest-ping","id":1}{"execute":"guest-ping","id":2}`+"\n"+`{"execute":"guest-sync","arguments":{"id":3}}`)
		second, _ := c.ReadLine()
		third, _ := c.ReadLine()
		got := []string{first, second, third}
		for i, want := range []string{`"id": 1`, `"id": 2`, `{"return": 3}`} {
			if !strings.Contains(got[i], want) {
				t.Fatalf("reply %d = %q, want %s", i, got[i], want)
			}
		}
	})
	t.Run("request split over many writes", func(t *testing.T) {
		req := `{"execute":"guest-sync","arguments":{"id":987}}`
		for i := 0; i < len(req); i++ {
			if _, err := c.Write([]byte{req[i]}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		line, err := c.ReadLine()
		if err != nil || !strings.Contains(line, "987") {
			t.Fatalf("split request: %q %v", line, err)
		}
	})
	t.Run("0xFF discards a partial request", func(t *testing.T) {
		line := call(t, c, "{\"execute\":\"guest-pi\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":5}}")
		r, delim := harness.Decode(t, line)
		if !delim || string(r.Return) != "5" {
			t.Fatalf("resync: %q", line)
		}
	})
}

func TestGuestInfoAndRPCLists(t *testing.T) {
	a := startAgent(t, "-b", "guest-get-time,guest-ping")
	c := harness.MustDial(t, a.Socket)
	r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-info"}`))
	var info struct {
		Version string `json:"version"`
		Cmds    []struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
			Success bool   `json:"success-response"`
		} `json:"supported_commands"`
	}
	if err := json.Unmarshal(r.Return, &info); err != nil {
		t.Fatal(err)
	}
	state := map[string]bool{}
	for _, cmd := range info.Cmds {
		if _, dup := state[cmd.Name]; dup {
			t.Fatalf("%s listed twice (duplicate registration must be refused)", cmd.Name)
		}
		state[cmd.Name] = cmd.Enabled
	}
	for _, name := range []string{"guest-sync", "guest-sync-delimited", "guest-info", "test-sleep", "test-blob"} {
		if !state[name] {
			t.Errorf("%s missing or disabled in guest-info: %v", name, state)
		}
	}
	if en, ok := state["guest-ping"]; !ok || en {
		t.Errorf("guest-ping should be listed and disabled")
	}
	if info.Version == "" {
		t.Error("no version")
	}
	expectError(t, call(t, c, `{"execute":"guest-ping"}`), "CommandNotFound", "Command guest-ping has been disabled")
	if !strings.Contains(a.Log.String(), "core command") {
		t.Errorf("the test plugin's guest-ping should be refused with a log line")
	}
}

func TestAllowList(t *testing.T) {
	a := startAgent(t, "-a", "guest-sync-delimited,test-pid")
	c := harness.MustDial(t, a.Socket)
	expectError(t, call(t, c, `{"execute":"guest-ping"}`), "CommandNotFound", "Command guest-ping has been disabled")
	if r, _ := harness.Decode(t, call(t, c, `{"execute":"test-pid"}`)); r.Error != nil {
		t.Fatalf("allowed command refused: %+v", r.Error)
	}
}

func TestRequestSizeLimit(t *testing.T) {
	_, sock := startAgentConfig(t, `
limits {
  max_request_bytes = 4096
}`)
	c := harness.MustDial(t, sock)
	big := `{"execute":"guest-sync","arguments":{"id":1,"pad":"` + strings.Repeat("x", 10000) + `"}}`
	line := call(t, c, big)
	expectError(t, line, "GenericError", "")
	if r, _ := harness.Decode(t, line); !strings.Contains(r.Error.Desc, "4096") {
		t.Fatalf("limit not named: %q", r.Error.Desc)
	}
	r, _ := harness.Decode(t, call(t, c, `{"execute":"guest-sync","arguments":{"id":77}}`))
	if string(r.Return) != "77" {
		t.Fatalf("channel did not keep serving after an oversized request: %+v", r)
	}
}

func TestLargeMessagesBothWays(t *testing.T) {
	a := startAgent(t)
	c := harness.MustDial(t, a.Socket)
	// 40 MiB out of a plugin, 12 MiB into it: far over gRPC's 4 MiB default.
	line := call(t, c, `{"execute":"test-blob","arguments":{"size":41943040}}`)
	r, _ := harness.Decode(t, line)
	var out struct {
		Count int    `json:"count"`
		Out   string `json:"out-b64"`
	}
	if err := json.Unmarshal(r.Return, &out); err != nil || out.Count != 41943040 || len(out.Out) != 55924056 {
		t.Fatalf("large reply: count=%d len=%d err=%v", out.Count, len(out.Out), err)
	}
	payload := strings.Repeat("QUJD", 4<<20) // 16 MiB of base64 = 12 MiB
	r, _ = harness.Decode(t, call(t, c, `{"execute":"test-blob","arguments":{"in-b64":"`+payload+`"}}`))
	if err := json.Unmarshal(r.Return, &out); err != nil || out.Count != 12<<20 || out.Out != payload {
		t.Fatalf("large request echo: count=%d err=%v", out.Count, err)
	}
	expectError(t, call(t, c, `{"execute":"test-blob","arguments":{"in-b64":"not base64!"}}`), "GenericError", "Base64 data contains invalid characters")
}
