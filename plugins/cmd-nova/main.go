// Command guest-agent-cmd-nova serves the commands of OpenStack's XenStore
// guest agent (nova-agent), as a XenServer/XCP-ng host running nova's xenapi
// driver sends them through the "nova" dialect: version, features, keyinit
// and password, injectfile (and the newer file_inject), resetnetwork,
// agentupdate and kmsactivate.
//
// Each command family lives in its own file. Every file the plugin writes is
// under the option root (default "/"), so tests run on a temporary tree, and
// nothing is ever run through a shell.
package main

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
)

// version is set by the build (-X main.version).
var version = "dev"

// nova is the plugin's state; tests build as many instances as they like.
type nova struct {
	opts options
	log  hclog.Logger

	// keyMu guards key: keyinit stores the AES key material for the next
	// password command, which wipes it.
	keyMu sync.Mutex
	key   *sessionKey

	// now is the clock (backup names, shadow's last-change day); tests
	// pin it.
	now func() time.Time
	// httpClient downloads agent updates.
	httpClient *http.Client
}

func newNova() *nova {
	return &nova{
		opts:       defaultOptions(),
		log:        hclog.NewNullLogger(),
		now:        time.Now,
		httpClient: &http.Client{},
	}
}

// plugin builds the command plugin around n. Tests call its Configure and
// Run directly, as the data plane does.
func (n *nova) plugin() *sdk.CommandPlugin {
	var cmds []sdk.Command
	for _, group := range [][]sdk.Command{
		n.versionCommands(),
		n.passwordCommands(),
		n.injectCommands(),
		n.networkCommands(),
		n.updateCommands(),
		n.kmsCommands(),
	} {
		cmds = append(cmds, group...)
	}
	for i := range cmds {
		// nova-agent's commands answer nova hosts only: a qga host sees
		// neither "password" nor "version" in guest-info.
		cmds[i].Dialects = []string{"nova"}
	}
	return &sdk.CommandPlugin{
		Name:      "cmd-nova",
		Version:   version,
		Commands:  cmds,
		Configure: n.configure,
		Busy:      n.busy,
	}
}

func (n *nova) configure(cfg sdk.Config) error {
	if cfg.Logger != nil {
		n.log = cfg.Logger
	}
	opts, err := parseOptions(cfg.Options)
	if err != nil {
		return err
	}
	n.opts = opts
	if d := opts.downloadTimeout; d > 0 {
		n.httpClient = &http.Client{Timeout: d}
	}
	return nil
}

// valueArg is the arguments object the nova dialect builds: {"value": ...}.
type valueArg struct {
	Value json.RawMessage `json:"value"`
}

// stringValue decodes the command's value as a string; a number is taken
// as its decimal text (nova's dom0 plugin sends keyinit's public key as a
// JSON number in some versions and as a string in others).
func stringValue(call *sdk.Call) (string, error) {
	var a valueArg
	if err := call.Decode(&a); err != nil {
		return "", err
	}
	raw := strings.TrimSpace(string(a.Value))
	if raw == "" || raw == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal([]byte(raw), &s); err == nil {
		return s, nil
	}
	var num json.Number
	if err := json.Unmarshal([]byte(raw), &num); err == nil {
		return num.String(), nil
	}
	return "", sdk.Errorf("%s: value must be a string", call.Command)
}

// novaReply is a reply with its own return code ("D0" for keyinit); the
// nova dialect sends it as is.
type novaReply struct {
	ReturnCode string `json:"returncode"`
	Message    string `json:"message"`
}

func main() {
	sdk.ServeCommands(newNova().plugin())
}

// quote renders a value for error messages.
func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
}

// busy keeps the plugin from leaving while idle (sdk.CommandPlugin.Busy)
// while it holds the key a keyinit agreed on: the password command that
// follows needs it.
func (n *nova) busy() string {
	n.keyMu.Lock()
	defer n.keyMu.Unlock()
	if n.key != nil {
		return "holding the key of a keyinit for the next password command"
	}
	return ""
}
