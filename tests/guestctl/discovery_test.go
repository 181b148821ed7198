package guestctl

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// TestDomainFromRuntimeXML: --domain finds the agent's socket in a libvirt
// status file (the runtime XML libvirtd's QEMU driver writes), here one
// pointing at each real agent, and in a directory of sockets.
func TestDomainFromRuntimeXML(t *testing.T) {
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		run := harness.ShortTempDir(t)
		status := fmt.Sprintf(`<domstatus state='running' reason='booted' pid='1'>
  <domain type='kvm' id='5'>
    <name>vm-%[1]s</name>
    <devices>
      <channel type='unix'>
        <source mode='bind' path='%[2]s'/>
        <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
      </channel>
    </devices>
  </domain>
</domstatus>
`, tg.name, tg.socket)
		if err := os.WriteFile(filepath.Join(run, "vm-"+tg.name+".xml"), []byte(status), 0o600); err != nil {
			t.Fatal(err)
		}
		// --direct: no libvirtd holds these sockets (a real one does: then
		// guestctl goes through libvirt, see the libvirt test).
		r := mustRun(t, "--libvirt-runtime-dir", run, "--direct", "-d", "vm-"+tg.name, "ping")
		if !strings.Contains(r.stdout, "agent answered") {
			t.Fatalf("ping through --domain: %q", r.stdout)
		}
		r = guestctl(t, timeout, nil, "--libvirt-runtime-dir", run, "-d", "other", "ping")
		if r.code == 0 || !strings.Contains(r.stderr, `guest "other"`) {
			t.Fatalf("unknown domain: exit %d, %q", r.code, r.stderr)
		}

		// A directory of sockets: DIR/NAME.sock.
		dir := harness.ShortTempDir(t)
		if err := os.Symlink(tg.socket, filepath.Join(dir, "one.sock")); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "--socket-dir", dir, "-d", "one", "ping")
	})
}
