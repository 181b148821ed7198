package main

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestGetOSInfoFromTree(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "etc", "os-release"), `# a comment
NAME="Test \"Linux\" \$HOME \q"
ID=testos
PRETTY_NAME='Test Linux 1.0 (Single Quoted)'
VERSION_ID=1.0 trailing;junk
VERSION="1.0 (Blue)"
VARIANT_ID=server;x
OTHER=ignored
not a key line
`, 0o644)
	tp := newTestPlugin(t, map[string]any{"root": root})
	var info map[string]string
	tp.ok("guest-get-osinfo", "", &info)
	want := map[string]string{
		"name":        `Test "Linux" $HOME \q`,
		"id":          "testos",
		"pretty-name": "Test Linux 1.0 (Single Quoted)",
		"version-id":  "1.0",
		"version":     "1.0 (Blue)",
		"variant-id":  "server",
	}
	for k, v := range want {
		if info[k] != v {
			t.Errorf("%s = %q, want %q", k, info[k], v)
		}
	}
	if _, ok := info["variant"]; ok {
		t.Errorf("variant present although os-release has none: %q", info["variant"])
	}
	// uname(1) is an independent reading of the kernel members.
	for member, flag := range map[string]string{"kernel-release": "-r", "kernel-version": "-v", "machine": "-m"} {
		out, err := exec.Command("uname", flag).Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); info[member] != got {
			t.Errorf("%s = %q, uname %s says %q", member, info[member], flag, got)
		}
	}
}

func TestGetOSInfoFallbacks(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "usr", "lib", "os-release"), "ID=fromusrlib\n", 0o644)
	tp := newTestPlugin(t, map[string]any{"root": root})
	var info map[string]string
	tp.ok("guest-get-osinfo", "", &info)
	if info["id"] != "fromusrlib" {
		t.Fatalf("id %q, want /usr/lib/os-release's", info["id"])
	}

	// qemu-ga's QGA_OS_RELEASE override wins.
	override := filepath.Join(t.TempDir(), "os-release")
	writeFile(t, override, "ID=override\nNAME=Over\n", 0o644)
	t.Setenv("QGA_OS_RELEASE", override)
	info = nil
	tp.ok("guest-get-osinfo", "", &info)
	if info["id"] != "override" || info["name"] != "Over" {
		t.Fatalf("with QGA_OS_RELEASE: %v", info)
	}

	// Not UTF-8, or no file at all: the kernel members only.
	writeFile(t, override, "ID=\xff\xfe\n", 0o644)
	info = nil
	tp.ok("guest-get-osinfo", "", &info)
	if _, ok := info["id"]; ok || info["machine"] == "" {
		t.Fatalf("non UTF-8 os-release: %v", info)
	}
}

func TestGetOSInfoOfThisMachine(t *testing.T) {
	if _, err := os.Stat("/etc/os-release"); err != nil {
		t.Skip("no /etc/os-release here")
	}
	tp := newTestPlugin(t, nil)
	var info map[string]string
	tp.ok("guest-get-osinfo", "", &info)
	// The shell's own parser of the file is the independent reading.
	for member, key := range map[string]string{"id": "ID", "name": "NAME", "pretty-name": "PRETTY_NAME", "version-id": "VERSION_ID"} {
		out, err := exec.Command("sh", "-c", `. /etc/os-release; printf '%s' "$`+key+`"`).Output()
		if err != nil {
			t.Fatal(err)
		}
		if info[member] != string(out) {
			t.Errorf("%s = %q, the shell reads %q", member, info[member], out)
		}
	}
}

func TestGetHostName(t *testing.T) {
	tp := newTestPlugin(t, nil)
	var hn map[string]string
	tp.ok("guest-get-host-name", "", &hn)
	want, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if len(hn) != 1 || hn["host-name"] != want {
		t.Fatalf("host name %v, os.Hostname says %q", hn, want)
	}
}

// utmpRecord builds one struct utmp record for this architecture.
func utmpRecord(typ int16, user string, sec, usec int64) []byte {
	l := utmpLayoutFor(runtime.GOARCH)
	rec := make([]byte, l.size)
	binary.NativeEndian.PutUint16(rec[utmpTypeOff:], uint16(typ))
	copy(rec[8:40], "pts/0")
	copy(rec[utmpUserOff:utmpUserOff+utmpUserLen], user)
	if l.tv64 {
		binary.NativeEndian.PutUint64(rec[l.tvOff:], uint64(sec))
		binary.NativeEndian.PutUint64(rec[l.tvUsecAt:], uint64(usec))
	} else {
		binary.NativeEndian.PutUint32(rec[l.tvOff:], uint32(sec))
		binary.NativeEndian.PutUint32(rec[l.tvUsecAt:], uint32(usec))
	}
	return rec
}

func TestGetUsersFromUtmp(t *testing.T) {
	root := t.TempDir()
	var data []byte
	data = append(data, utmpRecord(2, "reboot", 10, 0)...) // BOOT_TIME
	data = append(data, utmpRecord(7, "alice", 1700000100, 500000)...)
	data = append(data, utmpRecord(6, "bob", 1700000000, 0)...) // LOGIN_PROCESS: not logged in
	data = append(data, utmpRecord(7, "carol", 1700000200, 0)...)
	data = append(data, utmpRecord(7, "alice", 1700000050, 250000)...) // earlier session
	data = append(data, utmpRecord(7, "a-user-name-of-exactly-32-chars!", 1700000300, 0)...)
	data = append(data, 1, 2, 3) // a torn last record is ignored
	writeFile(t, filepath.Join(root, "var", "run", "utmp"), string(data), 0o644)
	tp := newTestPlugin(t, map[string]any{"root": root})
	var users []struct {
		User      string  `json:"user"`
		LoginTime float64 `json:"login-time"`
	}
	tp.ok("guest-get-users", "", &users)
	type u = struct {
		User      string  `json:"user"`
		LoginTime float64 `json:"login-time"`
	}
	want := []u{{"alice", 1700000050.25}, {"carol", 1700000200}, {"a-user-name-of-exactly-32-chars!", 1700000300}}
	if len(users) != len(want) {
		t.Fatalf("users %+v, want %+v", users, want)
	}
	for i := range want {
		if users[i] != want[i] {
			t.Errorf("user %d: %+v, want %+v", i, users[i], want[i])
		}
	}

	// No utmp file: nobody logged in, an empty list.
	tp = newTestPlugin(t, map[string]any{"root": t.TempDir()})
	resp := tp.ok("guest-get-users", "", nil)
	if string(resp.ResultJson) != "[]" {
		t.Fatalf("without utmp: %s", resp.ResultJson)
	}
}

func TestGetUsersOfThisMachine(t *testing.T) {
	tp := newTestPlugin(t, nil)
	var users []struct {
		User string `json:"user"`
	}
	tp.ok("guest-get-users", "", &users)
	// who(1) reads the same utmp through libc.
	out, err := exec.Command("who").Output()
	if err != nil {
		t.Skipf("who: %v", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			seen[f[0]] = true
		}
	}
	if len(users) != len(seen) {
		t.Fatalf("users %v, who lists %v", users, seen)
	}
	for _, u := range users {
		if !seen[u.User] {
			t.Errorf("%s not listed by who", u.User)
		}
	}
}
