package libvirt

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// guestctl drives the domain's agent with guestctl --domain, as a person
// would on this host: from libvirt's runtime status file of the domain
// (run inside libvirtd's mount namespace, where /run/libvirt is its own),
// and from virsh dumpxml with --connect (outside it). libvirtd holds the
// agent socket's one connection, so both go through libvirt (virsh
// qemu-agent-command), as for a remote URI. exec is checked end to end:
// output, exit code, stdin; then time --sync.
func (r *run) guestctl() {
	s := &step{name: "guestctl --domain"}
	r.steps = append(r.steps, s)
	if r.lost {
		s.out = "not run: the guest was lost in an earlier step"
		return
	}
	start := time.Now()
	bin := filepath.Join(harness.BinDir(r.t), "guestctl")
	var ns string
	if kids := harness.Children(r.dom.d.cmd.Process.Pid); len(kids) == 1 {
		ns = strconv.Itoa(kids[0])
	} else {
		r.fail(s, "libvirtd's namespace: unshare has children %v", kids)
		return
	}
	for _, c := range []struct {
		name string
		argv []string
	}{
		{"runtime status file", []string{"nsenter", "-t", ns, "-m", "--", bin, "-d", r.dom.name}},
		{"virsh dumpxml", []string{bin, "--connect", r.dom.d.uri, "-d", r.dom.name}},
	} {
		ctx, cancel := context.WithTimeout(r.ctx, 90*time.Second)
		cmd := exec.CommandContext(ctx, c.argv[0], append(c.argv[1:], "exec", "-i", "--", "sh", "-c", "read x; echo got $x; exit 7")...)
		cmd.Stdin = strings.NewReader("hello\n")
		out, err := cmd.CombinedOutput()
		cancel()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err == nil {
			code = 0
		}
		if code != 7 || string(out) != "got hello\n" {
			s.out = c.name + ": exit " + strconv.Itoa(code) + ": " + string(out)
			r.fail(s, "%s", s.out)
			return
		}
		ctx, cancel = context.WithTimeout(r.ctx, 60*time.Second)
		out, err = exec.CommandContext(ctx, c.argv[0], append(c.argv[1:], "ping")...).CombinedOutput()
		cancel()
		if err != nil || !strings.HasPrefix(string(out), "agent answered in ") {
			s.out = c.name + ": ping: " + string(out)
			r.fail(s, "%s", s.out)
			return
		}
	}
	// time --sync sets the guest's clock from the host's: then they agree.
	ctx, cancel := context.WithTimeout(r.ctx, 60*time.Second)
	out, err := exec.CommandContext(ctx, bin, "--connect", r.dom.d.uri, "-d", r.dom.name, "--json", "time", "--sync").CombinedOutput()
	cancel()
	var synced struct {
		Offset int64 `json:"offset-ns"`
		Synced bool  `json:"synced"`
	}
	if err != nil || json.Unmarshal(out, &synced) != nil || !synced.Synced ||
		time.Duration(synced.Offset).Abs() > 2*time.Second {
		s.out = "time --sync: " + string(out)
		r.fail(s, "%s", s.out)
		return
	}
	s.took, s.ok, s.shape, s.out = time.Since(start), true, "exec exit 7, got hello", "ok"
}
