package e2e

import (
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// plugin_tls = true: every plugin connection runs go-plugin's AutoMTLS, and
// the agent serves as without it (core and plugin commands).
func TestPluginTLS(t *testing.T) {
	a, sock := startAgentConfig(t, `plugin_tls = true`)
	c := harness.MustDial(t, sock)
	call(t, c, `{"execute":"guest-ping"}`+"\n")
	decodeReturn(t, call(t, c, `{"execute":"test-pid"}`+"\n"), new(struct{ PID int }))
	if !strings.Contains(a.Log.String(), "configuring client automatic mTLS") {
		t.Fatal("plugin_tls = true, but go-plugin did not configure mTLS")
	}
}
