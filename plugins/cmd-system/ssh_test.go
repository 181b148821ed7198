package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const (
	aliceUID = 4242
	aliceGID = 4343
)

// sshRoot makes a guest tree with a user alice whose home exists and is
// hers, and root, whose home holds a key that must never change.
func sshRoot(t *testing.T) (root, home string) {
	requireRoot(t) // chown to another user
	root = t.TempDir()
	writeFile(t, filepath.Join(root, "etc", "passwd"),
		"root:x:0:0:root:/root:/bin/sh\n"+
			"alice:x:4242:4343:Alice:/home/alice:/bin/sh\n"+
			"broken:x:notanumber:1::/home/broken:/bin/sh\n", 0o644)
	home = filepath.Join(root, "home", "alice")
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, aliceUID, aliceGID); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "root", ".ssh", "authorized_keys"), "ssh-ed25519 ROOTKEY root@host\n", 0o600)
	return root, home
}

func checkOwnerMode(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Uid != aliceUID || sys.Gid != aliceGID || st.Mode().Perm() != mode {
		t.Errorf("%s: owner %d:%d mode %v, want %d:%d %v", path, sys.Uid, sys.Gid, st.Mode().Perm(), aliceUID, aliceGID, mode)
	}
}

func TestSSHAuthorizedKeys(t *testing.T) {
	root, home := sshRoot(t)
	tp := newTestPlugin(t, map[string]any{"root": root})
	keys := filepath.Join(home, ".ssh", "authorized_keys")

	tp.fails("guest-ssh-get-authorized-keys", `{"username":"alice"}`, generic,
		"failed to read '"+keys+"': Failed to open file “"+keys+"”: No such file or directory")

	tp.ok("guest-ssh-add-authorized-keys", `{"username":"alice","keys":["ssh-rsa AAAA1 one","ssh-ed25519 AAAA2 two"]}`, nil)
	checkOwnerMode(t, filepath.Join(home, ".ssh"), 0o700)
	checkOwnerMode(t, keys, 0o600)
	if got := readFileString(t, keys); got != "ssh-rsa AAAA1 one\nssh-ed25519 AAAA2 two\n" {
		t.Fatalf("after add: %q", got)
	}

	// Present keys are not added twice.
	tp.ok("guest-ssh-add-authorized-keys", `{"username":"alice","keys":["ssh-ed25519 AAAA2 two","ssh-rsa AAAA3 three"],"reset":false}`, nil)
	if got := readFileString(t, keys); got != "ssh-rsa AAAA1 one\nssh-ed25519 AAAA2 two\nssh-rsa AAAA3 three\n" {
		t.Fatalf("after second add: %q", got)
	}

	// Comments and blank lines are kept in the file but are not keys.
	writeFile(t, keys, "# managed by hand\nssh-rsa AAAA1 one\n\n  ssh-ed25519 AAAA2 two  \nssh-rsa AAAA3 three", 0o600)
	var got struct {
		Keys []string `json:"keys"`
	}
	tp.ok("guest-ssh-get-authorized-keys", `{"username":"alice"}`, &got)
	// Last line first, as qemu-ga returns them.
	if want := []string{"ssh-rsa AAAA3 three", "ssh-ed25519 AAAA2 two", "ssh-rsa AAAA1 one"}; !equalStrings(got.Keys, want) {
		t.Fatalf("get: %q, want %q", got.Keys, want)
	}

	tp.ok("guest-ssh-remove-authorized-keys", `{"username":"alice","keys":["ssh-rsa AAAA1 one","ssh-rsa not-there"]}`, nil)
	if got := readFileString(t, keys); got != "# managed by hand\n\n  ssh-ed25519 AAAA2 two  \nssh-rsa AAAA3 three\n" {
		t.Fatalf("after remove: %q", got)
	}
	checkOwnerMode(t, keys, 0o600)

	tp.ok("guest-ssh-add-authorized-keys", `{"username":"alice","keys":["ssh-rsa AAAA9 nine"],"reset":true}`, nil)
	if got := readFileString(t, keys); got != "ssh-rsa AAAA9 nine\n" {
		t.Fatalf("after reset: %q", got)
	}
	tp.ok("guest-ssh-add-authorized-keys", `{"username":"alice","keys":[],"reset":true}`, nil)
	if got := readFileString(t, keys); got != "" {
		t.Fatalf("after reset to nothing: %q", got)
	}
	got.Keys = nil
	resp := tp.ok("guest-ssh-get-authorized-keys", `{"username":"alice"}`, &got)
	if string(resp.ResultJson) != `{"keys":[]}` {
		t.Fatalf("get of an empty file: %s", resp.ResultJson)
	}

	// Every rewrite went through a temporary file that is gone now.
	entries, _ := os.ReadDir(filepath.Join(home, ".ssh"))
	if len(entries) != 1 || entries[0].Name() != "authorized_keys" {
		t.Errorf(".ssh holds %v", entries)
	}
	if got := readFileString(t, filepath.Join(root, "root", ".ssh", "authorized_keys")); got != "ssh-ed25519 ROOTKEY root@host\n" {
		t.Errorf("root's keys changed: %q", got)
	}
}

func TestSSHRemoveWithoutFile(t *testing.T) {
	root, home := sshRoot(t)
	tp := newTestPlugin(t, map[string]any{"root": root})
	tp.ok("guest-ssh-remove-authorized-keys", `{"username":"alice","keys":["ssh-rsa AAAA1"]}`, nil)
	if _, err := os.Stat(filepath.Join(home, ".ssh")); !os.IsNotExist(err) {
		t.Errorf("remove created .ssh: %v", err)
	}
	if err := os.Mkdir(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	tp.ok("guest-ssh-remove-authorized-keys", `{"username":"alice","keys":["ssh-rsa AAAA1"]}`, nil)
}

func TestSSHErrors(t *testing.T) {
	root, _ := sshRoot(t)
	tp := newTestPlugin(t, map[string]any{"root": root})
	for _, cmd := range []string{"guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys"} {
		// The keys are checked before the user is looked up, as in qemu-ga.
		tp.fails(cmd, `{"username":"nobody-here","keys":["#comment"]}`, generic, "invalid OpenSSH public key: '#comment'")
		tp.fails(cmd, `{"username":"alice","keys":["a\nb"]}`, generic, "invalid OpenSSH public key: 'a\nb'")
		tp.fails(cmd, `{"username":"nobody-here","keys":["ssh-rsa A"]}`, generic, "failed to lookup user 'nobody-here': Success")
		tp.fails(cmd, `{"username":"alice","keys":[1]}`, generic, "Invalid parameter type for 'keys[0]', expected: string")
		tp.fails(cmd, `{"username":"alice"}`, generic, "Parameter 'keys' is missing")
		tp.fails(cmd, `{"keys":[]}`, generic, "Parameter 'username' is missing")
	}
	tp.fails("guest-ssh-get-authorized-keys", `{"username":""}`, generic, "failed to lookup user '': Success")
	tp.fails("guest-ssh-get-authorized-keys", `{"username":"broken"}`, generic, "failed to lookup user 'broken': Success")
	tp.fails("guest-ssh-add-authorized-keys", `{"username":"alice","keys":[],"reset":"yes"}`, generic, "Invalid parameter type for 'reset', expected: boolean")
}

// A user controls ~/.ssh. The root agent must not follow a symlink there
// into someone else's files.
func TestSSHRefusesSymlinkedDir(t *testing.T) {
	root, home := sshRoot(t)
	tp := newTestPlugin(t, map[string]any{"root": root})
	rootSSH := filepath.Join(root, "root", ".ssh")
	if err := os.Symlink(rootSSH, filepath.Join(home, ".ssh")); err != nil {
		t.Fatal(err)
	}
	desc := tp.failsPrefix("guest-ssh-add-authorized-keys", `{"username":"alice","keys":["ssh-rsa EVIL"]}`, "failed to open directory '")
	if !strings.Contains(desc, "Too many levels of symbolic links") && !strings.Contains(desc, "Not a directory") {
		t.Errorf("error %q", desc)
	}
	if got := readFileString(t, filepath.Join(rootSSH, "authorized_keys")); got != "ssh-ed25519 ROOTKEY root@host\n" {
		t.Fatalf("root's keys changed through the symlink: %q", got)
	}
	st, _ := os.Stat(filepath.Join(rootSSH, "authorized_keys"))
	if st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatal("root's authorized_keys was given away")
	}
}

// A symlinked authorized_keys is not read for a rewrite: its content would
// land in a file the user owns. With reset it is replaced by a file of the
// user's, its target left alone.
func TestSSHSymlinkedFile(t *testing.T) {
	root, home := sshRoot(t)
	tp := newTestPlugin(t, map[string]any{"root": root})
	sshDir := filepath.Join(home, ".ssh")
	if err := os.Mkdir(sshDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sshDir, aliceUID, aliceGID); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(root, "root", ".ssh", "authorized_keys")
	keys := filepath.Join(sshDir, "authorized_keys")
	if err := os.Symlink(target, keys); err != nil {
		t.Fatal(err)
	}
	tp.fails("guest-ssh-add-authorized-keys", `{"username":"alice","keys":["ssh-rsa ALICE"]}`, generic,
		"failed to read '"+keys+"': Failed to open file “"+keys+"”: Too many levels of symbolic links")
	tp.fails("guest-ssh-remove-authorized-keys", `{"username":"alice","keys":["ssh-rsa ALICE"]}`, generic,
		"failed to read '"+keys+"': Failed to open file “"+keys+"”: Too many levels of symbolic links")
	// Reading for the host follows the link, as qemu-ga does.
	var got struct {
		Keys []string `json:"keys"`
	}
	tp.ok("guest-ssh-get-authorized-keys", `{"username":"alice"}`, &got)
	if !equalStrings(got.Keys, []string{"ssh-ed25519 ROOTKEY root@host"}) {
		t.Errorf("get through the link: %q", got.Keys)
	}

	tp.ok("guest-ssh-add-authorized-keys", `{"username":"alice","keys":["ssh-rsa ALICE"],"reset":true}`, nil)
	checkOwnerMode(t, keys, 0o600)
	if got := readFileString(t, keys); got != "ssh-rsa ALICE\n" {
		t.Errorf("alice's keys: %q", got)
	}
	if got := readFileString(t, target); got != "ssh-ed25519 ROOTKEY root@host\n" {
		t.Fatalf("the link's target changed: %q", got)
	}
}

// A FIFO in place of authorized_keys must not hang the plugin.
func TestSSHFifo(t *testing.T) {
	root, home := sshRoot(t)
	tp := newTestPlugin(t, map[string]any{"root": root})
	sshDir := filepath.Join(home, ".ssh")
	if err := os.Mkdir(sshDir, 0o700); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(sshDir, "authorized_keys")
	if err := syscall.Mkfifo(keys, 0o600); err != nil {
		t.Fatal(err)
	}
	msg := "failed to read '" + keys + "': not a regular file of its own"
	tp.fails("guest-ssh-get-authorized-keys", `{"username":"alice"}`, generic, msg)
	tp.fails("guest-ssh-add-authorized-keys", `{"username":"alice","keys":["ssh-rsa A"]}`, generic, msg)
}
