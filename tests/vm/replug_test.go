package vm

import (
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// portID is the qdev id of the agent's virtserialport.
const portID = "qgaport"

// checkReplug unplugs the agent's port and plugs it again (QMP device_del,
// device_add), as a host does when it reconfigures a running guest. No
// systemd restarts the agent here: the parser, which holds the port with
// its host watch (hand_over_port), loses it; the exchange must wait for the
// port to return, hand it over again and leave.
func checkReplug(t *testing.T, vm *vmInstance) {
	// No host connected: the parser waits for one after its EOF, where an
	// unplug sends it no SIGIO (only the node's removal tells).
	time.Sleep(time.Second)
	if _, err := harness.QMP(vm.qmp, "device_del", map[string]any{"id": portID}); err != nil {
		t.Fatalf("device_del: %v", err)
	}
	// The port is gone once the guest has let go of it: qdev-id is free.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := harness.QMP(vm.qmp, "qom-list", map[string]any{"path": "/machine/peripheral"})
		if !strings.Contains(string(out), `"`+portID+`"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not release the port within 30 s: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // the agent notices and asks to reopen
	plugged := time.Now()
	if _, err := harness.QMP(vm.qmp, "device_add", map[string]any{"driver": "virtserialport", "bus": "vser0.0", "chardev": "qga0",
		"name": "org.qemu.guest_agent.0", "id": portID}); err != nil {
		t.Fatalf("device_add: %v", err)
	}
	for {
		if _, err := guestctl(t, vm.socket, "ping"); err == nil {
			break
		}
		if time.Since(plugged) > 30*time.Second {
			t.Fatalf("no answer 30 s after the port was plugged again; console:\n%s", vm.console.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("answered %s after the port was plugged again", time.Since(plugged).Round(time.Millisecond))
	c := dialRetry(t, vm.socket)
	defer c.Close()
	if _, err := c.SyncDelimited(4242, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// The exchange handed the port over again and was stopped.
	var procs string
	for i := 0; i < 20; i++ {
		procs = guestSh(t, c, `for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep "guest-agent-exchang[e]" || true`)
		if strings.TrimSpace(procs) == "" {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("the exchange still runs after handing the port over again:\n%s", procs)
}
