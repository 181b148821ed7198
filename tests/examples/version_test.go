package examples

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

const sharedModule = "github.com/guest-agent/guest-agent/shared"

// requiredShared is the version of shared an example's go.mod requires.
func requiredShared(t *testing.T, example string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir, example, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require ` + regexp.QuoteMeta(sharedModule) + ` (v\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("examples/%s/go.mod does not require %s by version on a line of its own", example, sharedModule)
	}
	return string(m[1])
}

// An example requires a version of shared that speaks the protocol the
// agent speaks (shared/README.md, "Versions"): its major is the protocol's,
// its minor no later than the latest "Added in 1.N" of the proto.
func TestExamplesRequireAProtocolVersion(t *testing.T) {
	proto, err := os.ReadFile("../../shared/proto/guestagent/v1/guestagent.proto")
	if err != nil {
		t.Fatal(err)
	}
	latest := 0
	for _, m := range regexp.MustCompile(`(?i)added in (\d+)\.(\d+)`).FindAllStringSubmatch(string(proto), -1) {
		if major, _ := strconv.Atoi(m[1]); major != sdk.ProtocolVersion {
			t.Fatalf("the v%d proto has an %q", sdk.ProtocolVersion, m[0])
		}
		minor, _ := strconv.Atoi(m[2])
		latest = max(latest, minor)
	}
	for example := range builtExamples {
		v := requiredShared(t, example)
		var major, minor, patch int
		if _, err := fmt.Sscanf(v, "v%d.%d.%d", &major, &minor, &patch); err != nil {
			t.Fatalf("examples/%s requires shared %s: not vX.Y.Z", example, v)
		}
		if major != sdk.ProtocolVersion || minor > latest {
			t.Errorf("examples/%s requires shared %s; the protocol is %d.%d", example, v, sdk.ProtocolVersion, latest)
		}
	}
}

// The tag scheme works the way a third party meets it: in a repository
// laid out as this one, with this checkout's shared/ committed and tagged
// shared/<version> (and the repository tagged v9.0.0, which must not count
// for shared), `go list -m -versions` sees the version, and
// examples/command-hello, with its go.mod's replace line taken out as its
// README says, builds against the tagged module fetched with git. The
// repository stands in for github.com through git's url.insteadOf; the
// other modules come from the local module cache (a file:// proxy), into a
// module cache of the test's own, so nothing is fetched from the network
// and the real cache gains no fake version.
func TestSharedFetchedByTag(t *testing.T) {
	version := requiredShared(t, "command-hello")
	work := t.TempDir()
	repo := filepath.Join(work, "repo")
	run := func(dir string, env []string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir, cmd.Env = dir, env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	realCache := strings.TrimSpace(run(".", os.Environ(), "go", "env", "GOMODCACHE"))
	gitConfig := filepath.Join(work, "gitconfig")
	if err := os.WriteFile(gitConfig, []byte(fmt.Sprintf(
		"[url \"file://%s\"]\n\tinsteadOf = https://github.com/guest-agent/guest-agent\n"+
			"[user]\n\tname = test\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n", repo)), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"GIT_CONFIG_GLOBAL="+gitConfig, "GIT_CONFIG_NOSYSTEM=1",
		"GOWORK=off", "CGO_ENABLED=0", "GOFLAGS=-mod=mod",
		"GOMODCACHE="+filepath.Join(work, "modcache"),
		"GOPROXY=file://"+filepath.Join(realCache, "cache", "download"),
		"GOPRIVATE=github.com/guest-agent/guest-agent", "GOSUMDB=off")
	t.Cleanup(func() {
		// The test's module cache is read-only; go clean empties it. Only
		// ever with env: without it, this would empty the real cache.
		c := exec.Command("go", "clean", "-modcache")
		c.Env = env
		if out, err := c.CombinedOutput(); err != nil {
			t.Errorf("emptying the test's module cache: %v\n%s", err, out)
		}
	})

	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	run(".", env, "cp", "-r", "../../shared", filepath.Join(repo, "shared"))
	run(repo, env, "git", "init", "-q")
	run(repo, env, "git", "add", "-A")
	run(repo, env, "git", "commit", "-q", "-m", "shared")
	run(repo, env, "git", "tag", "shared/"+version)
	run(repo, env, "git", "tag", "v9.0.0")

	user := filepath.Join(work, "user")
	if err := os.MkdirAll(user, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(run(user, env, "go", "list", "-m", "-versions", sharedModule)); got != sharedModule+" "+version {
		t.Fatalf("go list -m -versions: %q, want only %s", got, version)
	}

	// examples/command-hello as its author has it: no replace.
	src := filepath.Join(examplesDir, "command-hello")
	mod, err := os.ReadFile(filepath.Join(src, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	withoutReplace := regexp.MustCompile(`(?m)^replace .*\n`).ReplaceAll(mod, nil)
	if bytes.Equal(withoutReplace, mod) {
		t.Fatal("examples/command-hello/go.mod has no replace line to take out")
	}
	for name, data := range map[string][]byte{"go.mod": withoutReplace} {
		if err := os.WriteFile(filepath.Join(user, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run(".", env, "cp", filepath.Join(src, "main.go"), filepath.Join(src, "go.sum"), user)
	// -trimpath: the build cache then serves the packages built before
	// from the real module cache, whatever the directory they sit in now.
	run(user, env, "go", "build", "-trimpath", "-o", filepath.Join(work, "guest-agent-cmd-hello"), ".")
	if got := strings.TrimSpace(run(user, env, "go", "list", "-m", "-f", "{{.Version}} {{.Dir}}", sharedModule)); !strings.HasPrefix(got, version+" "+filepath.Join(work, "modcache")) {
		t.Fatalf("shared resolved as %q, want %s from the test's module cache", got, version)
	}
}
