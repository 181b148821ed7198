package supervisor

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRestartDelay(t *testing.T) {
	cases := []struct {
		crashes int
		want    time.Duration
	}{
		{1, 0}, {3, 0}, {4, 200 * time.Millisecond}, {5, 400 * time.Millisecond},
		{6, 800 * time.Millisecond}, {20, 5 * time.Second},
	}
	for _, c := range cases {
		if got := restartDelay(c.crashes, 5*time.Second); got != c.want {
			t.Errorf("restartDelay(%d) = %s, want %s", c.crashes, got, c.want)
		}
	}
	if got := restartDelay(10, 0); got != 0 {
		t.Errorf("a zero ceiling must disable the backoff, got %s", got)
	}
}

func TestDiscoverOrderAndShadowing(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	write := func(dir, name string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/true\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(first, "guest-agent-cmd-a", 0o755)
	write(second, "guest-agent-cmd-a", 0o755)
	write(second, "guest-agent-cmd-b", 0o755)
	write(second, "guest-agent-cmd-noexec", 0o644)
	write(second, "other-binary", 0o755)
	// A package manager's temporary files and a manifest are not plugins.
	write(second, "guest-agent-cmd-b.dpkg-new", 0o755)
	write(second, "guest-agent-cmd-b;5f3e2a1c", 0o755)
	write(second, "guest-agent-cmd-b.manifest", 0o644)
	found, err := Discover([]string{first, filepath.Join(first, "missing"), second})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 2 || found[0].Name != "cmd-a" || found[1].Name != "cmd-b" {
		t.Fatalf("found %+v", found)
	}
	if found[0].Path != filepath.Join(first, "guest-agent-cmd-a") || len(found[0].Shadowed) != 1 {
		t.Fatalf("the first directory must win: %+v", found[0])
	}
}
