package main

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestSetUserPasswordFeedsChpasswd(t *testing.T) {
	dir := t.TempDir()
	chpasswd, args, stdin := recorder(t, dir, "chpasswd", 0, "")
	tp := newTestPlugin(t, map[string]any{"chpasswd_path": chpasswd})

	// Quotes, spaces and shell syntax reach chpasswd as bytes, not through
	// a shell.
	secret := `s3cr't "$(rm -rf /)" ; x`
	tp.ok("guest-set-user-password", `{"username":"alice","password":"`+b64(secret)+`","crypted":false}`, nil)
	if got := readFileString(t, stdin); got != "alice:"+secret+"\n" {
		t.Fatalf("stdin %q", got)
	}
	if got := readLines(t, args); len(got) != 0 {
		t.Fatalf("plain password: chpasswd args %q, want none", got)
	}

	hash := "$6$salt$0123456789abcdef"
	tp.ok("guest-set-user-password", `{"username":"alice","password":"`+b64(hash)+`","crypted":true}`, nil)
	if got := readLines(t, args); !equalStrings(got, []string{"-e"}) {
		t.Fatalf("crypted: args %q, want -e", got)
	}
	if got := readFileString(t, stdin); got != "alice:"+hash+"\n" {
		t.Fatalf("stdin %q", got)
	}

	// A NUL ends the password, as in qemu-ga's C string.
	tp.ok("guest-set-user-password", `{"username":"alice","password":"`+base64.StdEncoding.EncodeToString([]byte("ab\x00cd"))+`","crypted":false}`, nil)
	if got := readFileString(t, stdin); got != "alice:ab\n" {
		t.Fatalf("stdin %q", got)
	}

	// With another root, chpasswd works in that tree.
	root := t.TempDir()
	tp = newTestPlugin(t, map[string]any{"chpasswd_path": chpasswd, "root": root})
	tp.ok("guest-set-user-password", `{"username":"alice","password":"`+b64(hash)+`","crypted":true}`, nil)
	if got := readLines(t, args); !equalStrings(got, []string{"-e", "-R", root}) {
		t.Fatalf("args %q", got)
	}
}

func TestSetUserPasswordErrors(t *testing.T) {
	dir := t.TempDir()
	chpasswd, _, stdin := recorder(t, dir, "chpasswd", 0, "")
	tp := newTestPlugin(t, map[string]any{"chpasswd_path": chpasswd})
	for args, want := range map[string]string{
		`{"username":"alice","password":"!!!","crypted":false}`:                 "Base64 data contains invalid characters",
		`{"username":"alice","password":"YWJj ZA==","crypted":false}`:           "Base64 data contains invalid characters",
		`{"username":"alice","password":"` + b64("a\nb") + `","crypted":false}`: "forbidden characters in raw password",
		`{"username":"a:b","password":"` + b64("x") + `","crypted":false}`:      "forbidden characters in username",
		`{"username":"a\nb","password":"` + b64("x") + `","crypted":false}`:     "forbidden characters in username",
		`{"username":"alice","password":"YQ"}`:                                  "Parameter 'crypted' is missing",
		`{"username":"alice","password":"YQ==","crypted":"yes"}`:                "Invalid parameter type for 'crypted', expected: boolean",
		`{"username":"alice","password":"YQ==","crypted":false,"extra":1}`:      "Parameter 'extra' is unexpected",
		`{"username":"alice","password":"YWJj\u0000ZA==","crypted":false}`:      "Base64 data contains embedded NUL characters",
	} {
		tp.fails("guest-set-user-password", args, generic, want)
	}
	if _, err := os.Stat(stdin); !os.IsNotExist(err) {
		t.Fatal("chpasswd ran for a refused request")
	}
	// Newlines inside base64 are allowed, as QEMU's decoder allows them.
	tp.ok("guest-set-user-password", `{"username":"alice","password":"YWJj\nZA==","crypted":false}`, nil)
	if got := readFileString(t, stdin); got != "alice:abcd\n" {
		t.Fatalf("stdin %q", got)
	}

	failing, _, _ := recorder(t, dir, "chpasswd-fail", 1, "chpasswd: (line 1, user alice) password not changed\n")
	tp = newTestPlugin(t, map[string]any{"chpasswd_path": failing})
	tp.fails("guest-set-user-password", `{"username":"alice","password":"YQ==","crypted":false}`, generic,
		"child process has failed to set user password: chpasswd: (line 1, user alice) password not changed\n")

	// A bare name is looked up in helper_path.
	tp = newTestPlugin(t, map[string]any{"helper_path": t.TempDir()})
	tp.fails("guest-set-user-password", `{"username":"alice","password":"YQ==","crypted":false}`, generic,
		"child process has failed to set user password: failed to exec 'chpasswd': No such file or directory\n")
	helpers := t.TempDir()
	_, _, hstdin := recorder(t, helpers, "chpasswd", 0, "")
	tp = newTestPlugin(t, map[string]any{"helper_path": "/nonexistent:" + helpers})
	tp.ok("guest-set-user-password", `{"username":"bob","password":"YQ==","crypted":true}`, nil)
	if got := readFileString(t, hstdin); got != "bob:a\n" {
		t.Fatalf("stdin %q", got)
	}
}

// TestSetUserPasswordRealChpasswd runs the real chpasswd, confined to a
// throwaway tree with -R: the machine's own accounts are not touched.
func TestSetUserPasswordRealChpasswd(t *testing.T) {
	requireRoot(t)
	chpasswd := requireTool(t, "chpasswd")
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\nalice:x:4242:4242::/home/alice:/bin/sh\n", 0o644)
	writeFile(t, filepath.Join(root, "etc", "group"), "root:x:0:\nalice:x:4242:\n", 0o644)
	writeFile(t, filepath.Join(root, "etc", "shadow"), "root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n", 0o640)
	if out, err := exec.Command(chpasswd, "--help").CombinedOutput(); !strings.Contains(string(out), "--root") {
		t.Skipf("this chpasswd has no -R (%v)", err)
	}
	tp := newTestPlugin(t, map[string]any{"chpasswd_path": chpasswd, "root": root})
	hash := "$6$rounds=5000$saltsalt$Hp/GJzVqJ2Vj3iXfU4Dn1cW6mxhNRCCcwL6Vq7qiT5w0dN7h2B7/7xTQmqF0P8e9q1ccd.0xYyQvGBqv2DJf1."
	tp.ok("guest-set-user-password", `{"username":"alice","password":"`+b64(hash)+`","crypted":true}`, nil)
	shadow := readFileString(t, filepath.Join(root, "etc", "shadow"))
	if !strings.Contains(shadow, "\nalice:"+hash+":") || !strings.HasPrefix(shadow, "root:*:") {
		t.Fatalf("shadow after chpasswd:\n%s", shadow)
	}
	// An unknown user: chpasswd's own complaint comes back.
	tp.failsPrefix("guest-set-user-password", `{"username":"mallory","password":"`+b64(hash)+`","crypted":true}`,
		"child process has failed to set user password: ")
}
