package supervisor

import (
	"bytes"
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

func commandPlugin(name string, seq, instance int, commands ...string) *managed {
	info := &pb.InfoResponse{Name: name, Kind: pb.Kind_KIND_COMMAND}
	for _, c := range commands {
		info.Commands = append(info.Commands, &pb.CommandSpec{Name: c})
	}
	return &managed{found: Found{Name: name}, info: info, seq: seq, instance: instance}
}

// A command declared twice stays with the plugin loaded first, whatever the
// names; the refusal is logged once however often the registry is rebuilt,
// and again only after it went away and came back.
func TestRegistryKeepsFirstOwnerAndLogsRefusalsOnce(t *testing.T) {
	var log bytes.Buffer
	s := New(Options{Config: &config.Agent{RuntimeDir: "/run/ga"}, Logger: hclog.New(&hclog.LoggerOptions{Output: &log})})
	s.plugins["cmd-zzz"] = commandPlugin("cmd-zzz", 1, 0, "x-one", "x-two")
	s.plugins["cmd-aaa"] = commandPlugin("cmd-aaa", 2, 3, "x-two", "x-three", "guest-ping")
	owners := func() map[string]string {
		s.buildRegistry()
		out := map[string]string{}
		for _, r := range s.routes {
			out[r.Command] = r.Plugin + " " + r.DataplaneSocket
		}
		return out
	}
	got := owners()
	want := map[string]string{
		"x-one": "cmd-zzz /run/ga/s/cmd-zzz.sock", "x-two": "cmd-zzz /run/ga/s/cmd-zzz.sock",
		"x-three": "cmd-aaa /run/ga/s/cmd-aaa.3.sock",
	}
	if len(got) != len(want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	for c, o := range want {
		if got[c] != o {
			t.Errorf("%s served by %q, want %q", c, got[c], o)
		}
	}
	owners()
	if n := strings.Count(log.String(), "duplicate command refused"); n != 1 {
		t.Errorf("duplicate refusal logged %d times over two rebuilds, want 1:\n%s", n, log.String())
	}
	if n := strings.Count(log.String(), "core command"); n != 1 {
		t.Errorf("core command refusal logged %d times, want 1", n)
	}
	// The first owner goes: the other serves the command, nothing refused.
	delete(s.plugins, "cmd-zzz")
	if got := owners(); got["x-two"] != "cmd-aaa /run/ga/s/cmd-aaa.3.sock" {
		t.Errorf("x-two after cmd-zzz left: %q", got["x-two"])
	}
	// It comes back (a later seq): refused again, and logged again.
	s.plugins["cmd-zzz"] = commandPlugin("cmd-zzz", 4, 5, "x-one", "x-two")
	if got := owners(); got["x-two"] != "cmd-aaa /run/ga/s/cmd-aaa.3.sock" || got["x-one"] != "cmd-zzz /run/ga/s/cmd-zzz.5.sock" {
		t.Errorf("after cmd-zzz came back: %v", got)
	}
	if n := strings.Count(log.String(), "duplicate command refused"); n != 2 {
		t.Errorf("duplicate refusals logged %d times, want 2 (one per appearance)", n)
	}
}

func TestCleanDirs(t *testing.T) {
	got := cleanDirs([]string{"/a/b/", "", "/a/b", "/c/../d", "/a/b/."})
	if strings.Join(got, " ") != "/a/b /d" {
		t.Errorf("cleanDirs = %q", got)
	}
}
