package guestctl

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// TestQueries: osinfo, fsinfo, ifaddr, users, vcpus, time against both
// agents, which run on this machine: a table for people, JSON that says
// what this machine is.
func TestQueries(t *testing.T) {
	osRelease, _ := os.ReadFile("/etc/os-release")
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		for _, c := range []struct {
			cmd, header string
			check       func(t *testing.T, js []byte)
		}{
			{"osinfo", "FIELD", func(t *testing.T, js []byte) {
				var v struct {
					ID string `json:"id"`
				}
				mustJSON(t, js, &v)
				if v.ID == "" || !strings.Contains(string(osRelease), "ID="+v.ID) {
					t.Errorf("osinfo id %q not in /etc/os-release", v.ID)
				}
			}},
			{"fsinfo", "MOUNTPOINT", func(t *testing.T, js []byte) {
				var v []struct {
					Mountpoint string `json:"mountpoint"`
				}
				mustJSON(t, js, &v)
				found := false
				for _, f := range v {
					found = found || f.Mountpoint == "/"
				}
				if !found {
					t.Errorf("fsinfo without /: %s", js)
				}
			}},
			{"ifaddr", "INTERFACE", func(t *testing.T, js []byte) {
				if !strings.Contains(string(js), `"127.0.0.1"`) {
					t.Errorf("ifaddr without 127.0.0.1: %.300s", js)
				}
			}},
			{"users", "USER", func(t *testing.T, js []byte) {
				var v []any
				mustJSON(t, js, &v)
			}},
			{"vcpus", "CPU", func(t *testing.T, js []byte) {
				var v []any
				mustJSON(t, js, &v)
				if len(v) != runtime.NumCPU() {
					t.Errorf("%d vCPUs, this machine has %d", len(v), runtime.NumCPU())
				}
			}},
			{"time", "", func(t *testing.T, js []byte) {
				var v struct {
					Offset int64 `json:"offset-ns"`
				}
				mustJSON(t, js, &v)
				if d := time.Duration(v.Offset); d > 5*time.Second || d < -5*time.Second {
					t.Errorf("the same clock %s apart", d)
				}
			}},
		} {
			text := mustRun(t, "-s", tg.socket, c.cmd)
			if !strings.HasPrefix(text.stdout, c.header) || strings.Count(text.stdout, "\n") < 1 {
				t.Errorf("%s: table %q", c.cmd, text.stdout)
			}
			c.check(t, []byte(mustRun(t, "-s", tg.socket, "--json", c.cmd).stdout))
		}
	})
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%.300s: %v", b, err)
	}
}

func fsfreezeStatus(t *testing.T, socket string) string {
	t.Helper()
	var st string
	mustJSON(t, []byte(mustRun(t, "-s", socket, "--json", "call", "guest-fsfreeze-status").stdout), &st)
	return st
}

// TestFreezeThaw: freeze and thaw, and freeze --for that thaws on its own
// and on SIGINT, each on a loop-mounted filesystem.
func TestFreezeThaw(t *testing.T) {
	mnt := harness.LoopFS(t)
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		r := mustRun(t, "-s", tg.socket, "freeze", "--mountpoint", mnt)
		if r.stdout != "frozen 1 filesystems (thaw with guestctl thaw)\n" || fsfreezeStatus(t, tg.socket) != "frozen" {
			t.Fatalf("freeze: %q", r.stdout)
		}
		if r := mustRun(t, "-s", tg.socket, "thaw"); r.stdout != "thawed 1 filesystems\n" || fsfreezeStatus(t, tg.socket) != "thawed" {
			t.Fatalf("thaw: %q", r.stdout)
		}

		start := time.Now()
		r = mustRun(t, "-s", tg.socket, "--json", "freeze", "--for", "1s", "--mountpoint", mnt)
		if r.stdout != "{\"frozen\":1}\n{\"thawed\":1}\n" || time.Since(start) < time.Second || fsfreezeStatus(t, tg.socket) != "thawed" {
			t.Fatalf("freeze --for 1s: %q after %s", r.stdout, time.Since(start))
		}

		cmd, lines, stderr := startGuestctl(t, "-s", tg.socket, "freeze", "--for", "1h", "--mountpoint", mnt)
		if l := <-lines; !strings.HasPrefix(l.text, "frozen 1 filesystems (thawing in 1h0m0s)") {
			t.Fatalf("first line %q %s", l.text, stderr.String())
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if l := <-lines; l.text != "thawed 1 filesystems (interrupt)" {
			t.Fatalf("after SIGINT: %q %s", l.text, stderr.String())
		}
		if code := exitOf(t, cmd, 10*time.Second); code != 0 || fsfreezeStatus(t, tg.socket) != "thawed" {
			t.Fatalf("exit %d, %s", code, stderr.String())
		}
	})
}

// tempUser is a guest user of the test's own (this machine's: the agents
// run here), removed at the end.
func tempUser(t *testing.T) (name, home string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to add a user")
	}
	name = fmt.Sprintf("gactl%06d", rand.IntN(1000000))
	home = filepath.Join(harness.ShortTempDir(t), "home")
	if out, err := exec.Command("useradd", "-m", "-d", home, "-s", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	return name, home
}

func shadowHash(t *testing.T, user string) string {
	t.Helper()
	b, err := os.ReadFile("/etc/shadow")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Split(l, ":"); len(f) > 2 && f[0] == user {
			return f[1]
		}
	}
	t.Fatalf("%s not in /etc/shadow", user)
	return ""
}

// TestPasswordAndSSHKeys: a password from stdin, and authorized keys
// added, listed and removed, for a user of the test's own.
func TestPasswordAndSSHKeys(t *testing.T) {
	user, home := tempUser(t)
	keys := []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGuestctlTestKeyOne one@test", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGuestctlTestKeyTwo two@test"}
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		before := shadowHash(t, user)
		r := guestctl(t, timeout, []byte("s3cret-"+tg.name+"\n"), "-s", tg.socket, "password", user)
		if r.code != 0 || r.stdout != "password of "+user+" set\n" {
			t.Fatalf("password: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		if after := shadowHash(t, user); after == before || !strings.HasPrefix(after, "$") {
			t.Fatalf("shadow entry %q after %q", after, before)
		}
		if r := guestctl(t, timeout, []byte("x\n"), "-s", tg.socket, "password", "nosuchuser-guestctl"); r.code == 0 {
			t.Fatal("password of a user that does not exist succeeded")
		}

		mustRun(t, "-s", tg.socket, "ssh-keys", user, "add", keys[0])
		guestctl(t, timeout, []byte(keys[1]+"\n"), "-s", tg.socket, "ssh-keys", user, "add")
		// Both agents list the newest key first: compared as a set.
		listed := strings.Split(strings.TrimSuffix(mustRun(t, "-s", tg.socket, "ssh-keys", user, "list").stdout, "\n"), "\n")
		sort.Strings(listed)
		if strings.Join(listed, "\n") != strings.Join(keys, "\n") {
			t.Fatalf("list: %q", listed)
		}
		b, err := os.ReadFile(filepath.Join(home, ".ssh", "authorized_keys"))
		if err != nil || !strings.Contains(string(b), keys[1]) {
			t.Fatalf("authorized_keys: %q %v", b, err)
		}
		mustRun(t, "-s", tg.socket, "ssh-keys", user, "remove", keys[0], keys[1])
		var got struct {
			Keys []string `json:"keys"`
		}
		mustJSON(t, []byte(mustRun(t, "-s", tg.socket, "--json", "ssh-keys", user, "list").stdout), &got)
		if len(got.Keys) != 0 {
			t.Fatalf("after remove: %q", got.Keys)
		}
	})
}
