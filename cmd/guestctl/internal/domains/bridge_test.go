package domains

import (
	"bufio"
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIsRemote(t *testing.T) {
	for uri, want := range map[string]bool{
		"qemu:///system": false, "qemu:///session": false, "test:///default": false,
		"qemu:///system?socket=/run/x/libvirt-sock": false, "qemu+unix:///system": false,
		"qemu+ssh://root@host/system": true, "qemu+tls://host.example/system": true,
		"qemu+tcp://10.1.2.3/system": true, "qemu://host/system": true, "": false,
	} {
		if IsRemote(uri) != want {
			t.Errorf("IsRemote(%q) = %v", uri, !want)
		}
	}
}

// TestBridge: the bridge answers syncs itself and passes commands to the
// real virsh; libvirt's test driver has no agent, so the command's answer
// is libvirt's error, which must come back as an error reply with the id.
func TestBridge(t *testing.T) {
	if _, err := exec.LookPath("virsh"); err != nil {
		t.Skip("virsh not installed (libvirt-clients): make test installs it")
	}
	node, _ := filepath.Abs(filepath.Join("testdata", "node.xml"))
	b, err := Virsh{Connect: "test://" + node}.NewBridge("web1", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := net.Dial("unix", b.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	if _, err := c.Write([]byte("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4242}}\n")); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadString('\n')
	if err != nil || line != "\xff{\"return\":4242}\n" {
		t.Fatalf("sync: %q %v", line, err)
	}
	if _, err := c.Write([]byte(`{"execute":"guest-ping","id":"gc1"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	line, err = r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		ID    string `json:"id"`
		Error struct {
			Class, Desc string
		} `json:"error"`
	}
	if json.Unmarshal([]byte(line), &rep) != nil || rep.ID != "gc1" || rep.Error.Class != "GenericError" || !strings.Contains(rep.Error.Desc, "qemu-agent-command") {
		t.Fatalf("command through the test driver: %q", line)
	}
	if _, err := c.Write([]byte("not json\n")); err != nil {
		t.Fatal(err)
	}
	if line, _ = r.ReadString('\n'); !strings.Contains(line, "not JSON") {
		t.Fatalf("bad request: %q", line)
	}
}
