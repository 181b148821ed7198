package guestctl

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// The agents run on this machine, so "the guest's" files are files here
// too: what guestctl wrote through the agent is read back directly.

// TestCpBigFileBothWays: 64 MiB into the guest and back, byte for byte,
// with its mode; guestctl checks the SHA-256 in the guest itself.
func TestCpBigFileBothWays(t *testing.T) {
	dir := harness.ShortTempDir(t)
	src := filepath.Join(dir, "big.bin")
	data := make([]byte, 64<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o640); err != nil {
		t.Fatal(err)
	}
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		in := filepath.Join(dir, "in-"+tg.name)
		start := time.Now()
		mustRun(t, "-s", tg.socket, "cp", src, "guest:"+in)
		up := time.Since(start)
		checkFile(t, in, data, 0o640)
		out := filepath.Join(dir, "out-"+tg.name)
		start = time.Now()
		r := mustRun(t, "-s", tg.socket, "cp", "guest:"+in, out)
		down := time.Since(start)
		checkFile(t, out, data, 0o640)
		if r.stderr != "" {
			t.Fatalf("progress or noise on a stderr that is not a terminal: %q", r.stderr)
		}
		t.Logf("64 MiB up %s (%.0f MB/s), down %s (%.0f MB/s)", up.Round(time.Millisecond), 64*1.048576/up.Seconds(),
			down.Round(time.Millisecond), 64*1.048576/down.Seconds())

		// Into an existing directory, under the file's name.
		sub := filepath.Join(dir, "into-"+tg.name)
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "-s", tg.socket, "cp", src, "guest:"+sub)
		checkFile(t, filepath.Join(sub, "big.bin"), data, 0o640)

		// Failures are errors: a missing file either way, a directory without -r.
		for _, args := range [][]string{
			{"cp", filepath.Join(dir, "none"), "guest:" + filepath.Join(dir, "x")},
			{"cp", "guest:" + filepath.Join(dir, "none"), filepath.Join(dir, "x")},
			{"cp", "guest:" + sub, filepath.Join(dir, "x")},
			{"cp", src, dir},
		} {
			if r := guestctl(t, timeout, nil, append([]string{"-s", tg.socket}, args...)...); r.code == 0 {
				t.Errorf("%q succeeded", args)
			}
		}
	})
}

func checkFile(t *testing.T, path string, want []byte, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d sent", path, len(got), len(want))
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != mode {
		t.Fatalf("%s: mode %o, want %o", path, st.Mode().Perm(), mode)
	}
}

// tree is a directory of files with their modes.
var tree = []struct {
	rel  string
	mode os.FileMode
	data string
}{
	{"bin/", 0o750, ""},
	{"bin/run.sh", 0o755, "#!/bin/sh\necho hi\n"},
	{"conf/", 0o700, ""},
	{"conf/secret", 0o600, "key"},
	{"conf/empty", 0o644, ""},
	{"ro/", 0o555, ""},
	{"ro/readme", 0o444, "read only"},
	{"name with spaces\nand a newline", 0o664, "odd name"},
}

func makeTree(t *testing.T, root string) {
	t.Helper()
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range tree {
		p := filepath.Join(root, e.rel)
		if strings.HasSuffix(e.rel, "/") {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(e.data), e.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, e.mode); err != nil {
			t.Fatal(err)
		}
	}
	for i := len(tree) - 1; i >= 0; i-- { // directories last: ro/ is read-only
		if strings.HasSuffix(tree[i].rel, "/") {
			if err := os.Chmod(filepath.Join(root, tree[i].rel), tree[i].mode); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func checkTree(t *testing.T, root string, rootMode os.FileMode) {
	t.Helper()
	if st, err := os.Stat(root); err != nil || st.Mode().Perm() != rootMode {
		t.Fatalf("%s: %v, mode %v, want %o", root, err, st, rootMode)
	}
	for _, e := range tree {
		p := filepath.Join(root, e.rel)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != e.mode {
			t.Errorf("%q: mode %o, want %o", e.rel, st.Mode().Perm(), e.mode)
		}
		if !st.IsDir() {
			if b, err := os.ReadFile(p); err != nil || string(b) != e.data {
				t.Errorf("%q: %q %v, want %q", e.rel, b, err, e.data)
			}
		}
	}
}

// TestCpDirectoryWithModes: -r both ways keeps contents and permission
// bits, read-only directories included.
func TestCpDirectoryWithModes(t *testing.T) {
	dir := harness.ShortTempDir(t)
	src := filepath.Join(dir, "tree")
	makeTree(t, src)
	if err := os.Chmod(src, 0o711); err != nil {
		t.Fatal(err)
	}
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		in := filepath.Join(dir, "in-"+tg.name)
		mustRun(t, "-s", tg.socket, "cp", "-r", src, "guest:"+in)
		checkTree(t, in, 0o711)
		out := filepath.Join(dir, "out-"+tg.name)
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "-s", tg.socket, "cp", "-r", "guest:"+in, out+"/")
		checkTree(t, filepath.Join(out, "in-"+tg.name), 0o711)
	})
	// Let the temp dir go: read-only directories would stop its removal.
	_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
}

// TestCpProgressOnlyOnATerminal: under a pseudo-terminal (script(1)) the
// progress bar is drawn; with pipes (the other tests) stderr stays empty.
func TestCpProgressOnlyOnATerminal(t *testing.T) {
	if _, err := exec.LookPath("script"); err != nil {
		t.Fatal("script(1) from util-linux (bsdutils) is needed")
	}
	dir := harness.ShortTempDir(t)
	src := filepath.Join(dir, "f")
	if err := os.WriteFile(src, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	forBoth(t, harness.Options{}, func(t *testing.T, tg target) {
		dst := filepath.Join(dir, "g-"+tg.name)
		line := fmt.Sprintf("%s -s %s cp %s guest:%s", filepath.Join(harness.BinDir(t), "guestctl"), tg.socket, src, dst)
		out, err := exec.Command("script", "-q", "-e", "-c", line, "/dev/null").CombinedOutput()
		if err != nil {
			t.Fatalf("under a pty: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "upload") || !strings.Contains(string(out), "100%") || !strings.Contains(string(out), "8.4 MB") {
			t.Fatalf("no progress bar on a terminal:\n%q", out)
		}
		r := mustRun(t, "-s", tg.socket, "cp", "guest:"+dst, dst+".back")
		if r.stderr != "" {
			t.Fatalf("progress on a pipe: %q", r.stderr)
		}
	})
}
