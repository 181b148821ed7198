package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"
)

func testInfo(commands ...string) *pb.InfoResponse {
	info := &pb.InfoResponse{Name: "cmd-x", Version: "1", Kind: pb.Kind_KIND_COMMAND}
	for _, c := range commands {
		info.Commands = append(info.Commands, &pb.CommandSpec{Name: c, SuccessResponse: true})
	}
	return info
}

// writeTestManifest writes the manifest of the binary at path as it is now.
func writeTestManifest(t *testing.T, path string, info *pb.InfoResponse, edit func(*binaryIdentity)) {
	t.Helper()
	id, err := identify(path)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&id)
	}
	b, err := encodeManifest(filepath.Base(path), id, info)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ManifestPath(path), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyTo(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// The test binary is a Go binary: its build ID is what `go tool buildid`
// prints.
func TestGoBuildIDOfAGoBinary(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	id, err := goBuildID(exe)
	if err != nil || id == "" {
		t.Fatalf("goBuildID(%s) = %q, %v", exe, id, err)
	}
	out, err := exec.Command("go", "tool", "buildid", exe).Output()
	if err != nil {
		t.Skipf("go tool buildid: %v", err)
	}
	if want := strings.TrimSpace(string(out)); id != want {
		t.Fatalf("goBuildID = %q, go tool buildid = %q", id, want)
	}
	if _, err := goBuildID("/bin/sh"); err == nil {
		t.Log("/bin/sh has a Go build ID?") // a C binary has none; not fatal on odd systems
	}
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := goBuildID(script); err == nil {
		t.Fatal("a script has no Go build ID")
	}
}

func TestFindGoNote(t *testing.T) {
	le := func(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }
	note := func(name string, typ uint32, desc string) []byte {
		b := append(le(uint32(len(name)+1)), le(uint32(len(desc)))...)
		b = append(b, le(typ)...)
		n := append([]byte(name), 0)
		for len(n)%4 != 0 {
			n = append(n, 0)
		}
		d := []byte(desc)
		for len(d)%4 != 0 {
			d = append(d, 0)
		}
		return append(append(b, n...), d...)
	}
	var order littleEndian
	data := append(note("GNU", 3, "abcd"), note("Go", 4, "a/b/c/d1")...)
	if id, ok := findGoNote(data, order); !ok || id != "a/b/c/d1" {
		t.Fatalf("findGoNote = %q %v", id, ok)
	}
	if _, ok := findGoNote(data[:len(data)-3], order); ok {
		t.Fatal("a truncated note must not be read")
	}
	if _, ok := findGoNote(note("Go", 1, "x"), order); ok {
		t.Fatal("only the build ID note (type 4) counts")
	}
}

type littleEndian struct{}

func (littleEndian) Uint32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// A manifest is believed only for the binary it describes: same size and
// Go build ID, or same size and SHA-256 for a binary without a build ID.
func TestManifestIdentity(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "guest-agent-cmd-x")
	copyTo(t, exe, bin)
	info := testInfo("x-one", "x-two")

	if _, err := loadManifest(bin, ""); !errors.Is(err, errNoManifest) {
		t.Fatalf("no manifest: %v", err)
	}
	writeTestManifest(t, bin, info, nil)
	got, err := loadManifest(bin, "")
	if err != nil || !proto.Equal(got, info) {
		t.Fatalf("matching manifest: %v %v", got, err)
	}
	id, _ := identify(bin)
	if id.GoBuildID == "" || id.SHA256 == "" || id.Size == 0 {
		t.Fatalf("identity %+v", id)
	}

	// Pinned: the manifest must record the pinned checksum.
	if _, err := loadManifest(bin, strings.ToUpper(id.SHA256)); err != nil {
		t.Fatalf("pin equal to the manifest's SHA-256: %v", err)
	}
	if _, err := loadManifest(bin, strings.Repeat("0", 64)); err == nil {
		t.Fatal("a pin other than the manifest's SHA-256 must refuse it")
	}

	// Another build under the same name.
	writeTestManifest(t, bin, info, func(id *binaryIdentity) { id.GoBuildID = "other/build/id/x" })
	if _, err := loadManifest(bin, ""); err == nil || !strings.Contains(err.Error(), "build ID") {
		t.Fatalf("other build ID: %v", err)
	}
	// The build ID is checked, not the hash: a Go binary is not hashed at
	// start-up.
	writeTestManifest(t, bin, info, func(id *binaryIdentity) { id.SHA256 = strings.Repeat("f", 64) })
	if _, err := loadManifest(bin, ""); err != nil {
		t.Fatalf("Go binary with a matching build ID: %v", err)
	}
	// The binary grew (replaced, appended to).
	writeTestManifest(t, bin, info, nil)
	f, err := os.OpenFile(bin, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0})
	f.Close()
	if _, err := loadManifest(bin, ""); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("binary of another size: %v", err)
	}

	// Broken manifests.
	for name, content := range map[string]string{
		"not JSON":     "{",
		"other format": `{"manifest":2}`,
		"no kind":      `{"manifest":1,"binary":{"size":1}}`,
	} {
		script := filepath.Join(dir, "guest-agent-cmd-y")
		if err := os.WriteFile(script, []byte("x"), 0o755); err != nil {
			t.Fatal(err)
		}
		id, _ := identify(script)
		b, _ := json.Marshal(id)
		content = strings.Replace(content, `{"size":1}`, string(b), 1)
		if err := os.WriteFile(ManifestPath(script), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadManifest(script, ""); err == nil {
			t.Errorf("%s: manifest believed", name)
		}
	}
}

// A binary without a Go build ID (a script, a plugin in another language)
// is identified by size and SHA-256.
func TestManifestIdentityWithoutBuildID(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "guest-agent-cmd-sh")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestManifest(t, bin, testInfo("sh-one"), nil)
	if id, _ := identify(bin); id.GoBuildID != "" {
		t.Fatalf("a script has a build ID? %+v", id)
	}
	if _, err := loadManifest(bin, ""); err != nil {
		t.Fatalf("matching script: %v", err)
	}
	// Same size, other content.
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := loadManifest(bin, ""); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("same size, other content: %v", err)
	}
}

// Load takes a plugin whose manifest matches from the manifest, without
// launching it (the binary here could not even start), and launches one
// whose manifest is stale (and, here, fails to load it).
func TestLoadBelievesMatchingManifestsWithoutLaunching(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "guest-agent-cmd-good")
	stale := filepath.Join(dir, "guest-agent-cmd-stale")
	for _, p := range []string{good, stale} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeTestManifest(t, good, testInfo("good-one", "good-two"), nil)
	writeTestManifest(t, stale, testInfo("stale-one"), nil)
	if err := os.WriteFile(stale, []byte("#!/bin/sh\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	s := New(Options{Config: &config.Agent{StateDir: state}, PluginDirs: []string{dir}, Version: "test", Logger: hclog.NewNullLogger()})
	defer s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Load(ctx, true); err != nil { // waitAll: anything not believed is launched now
		t.Fatal(err)
	}
	cmds := strings.Join(s.Commands(), " ")
	if !strings.Contains(cmds, "good-one") || !strings.Contains(cmds, "good-two") {
		t.Errorf("commands from the manifest missing: %s", cmds)
	}
	if strings.Contains(cmds, "stale-one") {
		t.Errorf("a stale manifest was believed: %s", cmds)
	}
	if m := s.plugins["cmd-good"]; m == nil || m.believed != "manifest" {
		t.Errorf("cmd-good not taken from its manifest: %+v", m)
	}
}

func TestDiscoverIgnoresManifests(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"guest-agent-cmd-a", "guest-agent-cmd-a.manifest", "guest-agent-cmd-a.sha256"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	found, err := Discover([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Name != "cmd-a" {
		t.Fatalf("found %+v", found)
	}
}

// The info cache is written in the background, only when it changed.
func TestInfoCacheSavedInBackground(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "guest-agent-cmd-c")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "plugin-info.json")
	c := loadInfoCache(path)
	c.saveInBackground(hclog.NewNullLogger())
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(path); err == nil {
		t.Fatal("an unchanged cache was written")
	}
	f := Found{Name: "cmd-c", Path: bin}
	c.put(f, testInfo("c-one"))
	c.saveInBackground(hclog.NewNullLogger())
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got := loadInfoCache(path).get(f); got != nil {
			if !proto.Equal(got, testInfo("c-one")) {
				t.Fatalf("cached %v", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cache not written")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
