package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// pluginDir holds the in-tree binaries plus the test plugin, built once;
// testPluginV2 is the test plugin built as version 2.0.0 (an upgrade), kept
// outside pluginDir.
var pluginDir, testPluginV2 string

func TestMain(m *testing.M) {
	bin := os.Getenv("GUEST_AGENT_BIN")
	if bin == "" {
		os.Stderr.WriteString("GUEST_AGENT_BIN is not set: run through `make test`\n")
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "gaplug")
	if err != nil {
		panic(err)
	}
	entries, _ := os.ReadDir(bin)
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(bin, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			panic(err)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "guest-agent-cmd-test"), "../testplugin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.Stderr.WriteString("building the test plugin failed\n")
		os.Exit(2)
	}
	v2dir, err := os.MkdirTemp("", "gaplugv2")
	if err != nil {
		panic(err)
	}
	testPluginV2 = filepath.Join(v2dir, "guest-agent-cmd-test")
	build = exec.Command("go", "build", "-ldflags", "-X main.version=2.0.0", "-o", testPluginV2, "../testplugin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.Stderr.WriteString("building version 2 of the test plugin failed\n")
		os.Exit(2)
	}
	pluginDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.RemoveAll(v2dir)
	os.Exit(code)
}
