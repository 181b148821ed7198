// Package examples drives the plugins of examples/ through the real agent,
// built the way their third-party authors build them: each example is its
// own module, built alone (GOWORK=off) from its own go.mod and go.sum, and
// dropped beside the in-tree plugins with its manifest.
package examples

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// pluginDir holds the in-tree binaries of make build plus the examples.
var pluginDir string

// examplesDir is examples/ of this checkout.
const examplesDir = "../../examples"

// builtExamples maps each example's directory to the plugin binary it
// becomes.
var builtExamples = map[string]string{
	"command-hello": "guest-agent-cmd-hello",
	"exchange-tcp":  "guest-agent-exchange-tcp",
	"dialect-lines": "guest-agent-parser-lines",
}

func TestMain(m *testing.M) {
	bin := os.Getenv("GUEST_AGENT_BIN")
	if bin == "" {
		fmt.Fprintln(os.Stderr, "GUEST_AGENT_BIN is not set: run through `make test`")
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "gaex")
	if err != nil {
		panic(err)
	}
	code, err := setUp(bin, dir)
	if err == nil {
		pluginDir = dir
		code = m.Run()
	} else {
		fmt.Fprintln(os.Stderr, err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func setUp(bin, dir string) (int, error) {
	entries, err := os.ReadDir(bin)
	if err != nil {
		return 2, err
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(bin, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return 2, err
		}
	}
	// The e2e tests' command plugin, for its test-sleep: a command that
	// finishes after the ones sent behind it.
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "guest-agent-cmd-test"), "../testplugin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return 2, fmt.Errorf("building the test plugin: %w", err)
	}
	for src, name := range builtExamples {
		out := filepath.Join(dir, name)
		build := exec.Command("go", "build", "-trimpath", "-o", out, ".")
		build.Dir = filepath.Join(examplesDir, src)
		// Alone, as outside this repository: go.work would swap in ./shared
		// whatever the example's go.mod says.
		build.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return 2, fmt.Errorf("building examples/%s: %w", src, err)
		}
		// The packager's step (shared/README.md): the agent then knows the
		// plugin at boot without starting it.
		manifest := exec.Command(filepath.Join(bin, "guest-agent"), "manifest", "--write", out)
		manifest.Stdout, manifest.Stderr = os.Stderr, os.Stderr
		if err := manifest.Run(); err != nil {
			return 2, fmt.Errorf("manifest of examples/%s: %w", src, err)
		}
	}
	return 0, nil
}
