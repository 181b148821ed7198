package negotiator

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestDistribution(t *testing.T) {
	dir := t.TempDir()
	osr := filepath.Join(dir, "os-release")
	os.WriteFile(osr, []byte("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n"), 0o644)
	lsb := filepath.Join(dir, "lsb-release")
	run := func(s BuiltinSources, name string) string {
		out, err := s.Builtins()[name](context.Background(), nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return out
	}
	s := BuiltinSources{LSBRelease: lsb, OSRelease: []string{filepath.Join(dir, "missing"), osr}}
	for name, want := range map[string]string{"find-distributor-id": "Debian", "find-distribution-release": "12", "find-distribution-codename": "bookworm"} {
		if got := run(s, name); got != want {
			t.Errorf("%s from os-release: %q, want %q", name, got, want)
		}
	}
	// lsb-release first, as lsb_release reads it.
	os.WriteFile(lsb, []byte("DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\nDISTRIB_CODENAME=noble\n"), 0o644)
	for name, want := range map[string]string{"find-distributor-id": "Ubuntu", "find-distribution-release": "24.04", "find-distribution-codename": "noble"} {
		if got := run(s, name); got != want {
			t.Errorf("%s from lsb-release: %q, want %q", name, got, want)
		}
	}
	os.WriteFile(osr, []byte("NAME=\"Debian GNU/Linux\"\nID=debian\n"), 0o644)
	os.Remove(lsb)
	if got := run(s, "find-distribution-codename"); got != "n/a" {
		t.Errorf("no codename: %q", got)
	}
}

func TestDiskUsage(t *testing.T) {
	dir := t.TempDir()
	mi := filepath.Join(dir, "mountinfo")
	// The root twice (a bind mount of it: shown once, at the shorter
	// path), a pseudo filesystem (skipped) and an escaped mount point.
	spaced := filepath.Join(dir, "a b")
	os.Mkdir(spaced, 0o755)
	os.WriteFile(mi, []byte(
		"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"+
			"23 22 8:1 / /srv/bind rw,relatime shared:1 - ext4 /dev/vda1 rw\n"+
			"24 22 0:5 / /proc rw - proc proc rw\n"+
			"25 22 8:2 / "+strings.ReplaceAll(spaced, " ", `\040`)+" rw - ext4 /dev/vdb rw\n"), 0o644)
	out, err := BuiltinSources{MountInfo: mi}.Builtins()["find-disk-usage"](context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "/dev/vda1 / ") || !strings.HasPrefix(lines[1], "/dev/vdb "+spaced+" ") {
		t.Fatalf("find-disk-usage:\n%s", out)
	}
	var st syscall.Statfs_t
	syscall.Statfs("/", &st)
	f := strings.Fields(lines[0])
	if total, _ := strconv.ParseUint(f[2], 10, 64); total != st.Blocks*uint64(st.Bsize) {
		t.Fatalf("total of / %s, statfs says %d", f[2], st.Blocks*uint64(st.Bsize))
	}
}
