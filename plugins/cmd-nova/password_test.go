package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// simpleDH is the host side, as nova's SimpleDH in
// nova/virt/xenapi/agent.py does it: an 80-bit private key from
// os.urandom(10), p = 162259276829213363391578010288127, g = 5, and the
// password encrypted by `openssl aes-128-cbc -A -a -pass pass:<shared>
// -nosalt` (OpenSSL of that time: EVP_BytesToKey with MD5).
type simpleDH struct {
	private, public, shared *big.Int
}

func newSimpleDH(t *testing.T) *simpleDH {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	prime, ok := new(big.Int).SetString("162259276829213363391578010288127", 10)
	if !ok || prime.Cmp(dhPrime) != 0 {
		t.Fatal("the plugin's prime is not nova's")
	}
	dh := &simpleDH{private: new(big.Int).SetBytes(b)}
	dh.public = new(big.Int).Exp(big.NewInt(5), dh.private, prime)
	return dh
}

func (dh *simpleDH) computeShared(agentPub string, t *testing.T) {
	other, ok := new(big.Int).SetString(agentPub, 10)
	if !ok {
		t.Fatalf("agent public key %q is not a decimal number", agentPub)
	}
	dh.shared = new(big.Int).Exp(other, dh.private, dhPrime)
}

// encrypt is `openssl aes-128-cbc -A -a -nosalt -pass pass:<shared>` with
// MD5 key derivation, and .strip('\n').
func (dh *simpleDH) encrypt(text string) string {
	pass := []byte(dh.shared.String())
	d1 := md5.Sum(pass)
	d2 := md5.Sum(append(d1[:], pass...))
	block, _ := aes.NewCipher(d1[:])
	pad := aes.BlockSize - len(text)%aes.BlockSize
	pt := append([]byte(text), bytes.Repeat([]byte{byte(pad)}, pad)...)
	ct := make([]byte, len(pt))
	cipher.NewCBCEncrypter(block, d2[:]).CryptBlocks(ct, pt)
	return base64.StdEncoding.EncodeToString(ct)
}

// opensslEncrypt runs the real openssl as nova's _run_ssl does, with md
// "" (the installed OpenSSL's default, SHA-256 since 1.1.0) or "md5".
func (dh *simpleDH) opensslEncrypt(t *testing.T, text, md string) string {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	args := []string{"aes-128-cbc", "-A", "-a", "-pass", "pass:" + dh.shared.String(), "-nosalt"}
	if md != "" {
		args = append(args, "-md", md)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl: %v: %s", err, stderr.String())
	}
	return strings.Trim(string(out), "\n")
}

const shadowFixture = "root:$5$rounds=8000$oldsaltoldsalt$2yqEvnEuTPuZwXzCQ2cOPc2ITRHwTHb7rMv9u6V.yI2:19000:0:99999:7:::\n" +
	"daemon:*:19000:0:99999:7:::\n" +
	"alice:$y$j9T$Vq7.UXRFJ3k0G5c3TTeVi/$AQ1JKcSJL0KXU1Q5y6vnGmWY8bbDz0w3gkE5pCJ0xUA:19000:0:99999:7:::\n" +
	"bob:!$6$abc$def:19000:0:99999:7:::\n" +
	"carol:$6$rounds=6000$xyz$abc:19000::::::\n"

func shadowRoot(t *testing.T) string {
	root := t.TempDir()
	path := filepath.Join(root, "etc", "shadow")
	writeFile(t, path, shadowFixture, 0o640)
	if err := os.Chown(path, 0, 42); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	return root
}

// shadowEntry returns the fields of user's line.
func shadowEntry(t *testing.T, root, user string) []string {
	t.Helper()
	for _, line := range strings.Split(readFile(t, filepath.Join(root, "etc", "shadow")), "\n") {
		f := strings.Split(line, ":")
		if f[0] == user {
			return f
		}
	}
	t.Fatalf("%s not in shadow", user)
	return nil
}

// exchange runs keyinit with the host's public key sent as JSON value v.
func exchange(t *testing.T, tp *testPlugin, dh *simpleDH, asNumber bool) {
	t.Helper()
	var v any = dh.public.String()
	if asNumber {
		v = json.RawMessage(dh.public.String())
	}
	res, perr := tp.run(cmdKeyinit, v)
	if perr != nil {
		t.Fatalf("keyinit: %s", perr.Desc)
	}
	var r novaReply
	if err := json.Unmarshal(res, &r); err != nil || r.ReturnCode != "D0" {
		t.Fatalf("keyinit reply %s", res)
	}
	dh.computeShared(r.Message, t)
}

func TestKeyinitPassword(t *testing.T) {
	for _, tc := range []struct {
		name     string
		asNumber bool
		encrypt  func(dh *simpleDH, t *testing.T, text string) string
	}{
		{"go-md5-string-key", false, func(dh *simpleDH, _ *testing.T, s string) string { return dh.encrypt(s) }},
		{"go-md5-number-key", true, func(dh *simpleDH, _ *testing.T, s string) string { return dh.encrypt(s) }},
		{"openssl-md5", false, func(dh *simpleDH, t *testing.T, s string) string { return dh.opensslEncrypt(t, s, "md5") }},
		{"openssl-default-sha256", false, func(dh *simpleDH, t *testing.T, s string) string { return dh.opensslEncrypt(t, s, "") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := shadowRoot(t)
			tp := newTestPlugin(t, map[string]any{"root": root})
			dh := newSimpleDH(t)
			exchange(t, tp, dh, tc.asNumber)
			const newPass = "S3cret pass wörd!"
			// nova appends "\n" for old agents.
			if msg := tp.ok(cmdPassword, tc.encrypt(dh, t, newPass+"\n")); msg != "" {
				t.Fatalf("password message %q", msg)
			}
			f := shadowEntry(t, root, "root")
			if !strings.HasPrefix(f[1], "$5$rounds=8000$") || strings.Contains(f[1], "oldsaltoldsalt") {
				t.Fatalf("hash %q: want $5$ with the old rounds and a new salt", f[1])
			}
			if again, _ := shaCrypt([]byte(newPass), f[1]); again != f[1] {
				t.Fatalf("hash %q does not verify the password", f[1])
			}
			if f[2] != "20779" { // 2026-11-22 in days since the epoch
				t.Fatalf("last change %q", f[2])
			}
			// Everything else unchanged; mode and owner kept.
			want := strings.SplitAfter(shadowFixture, "\n")[1:]
			got := strings.SplitAfter(readFile(t, filepath.Join(root, "etc", "shadow")), "\n")[1:]
			if strings.Join(got, "") != strings.Join(want, "") {
				t.Fatalf("other lines changed:\n%s", strings.Join(got, ""))
			}
			fi, _ := os.Stat(filepath.Join(root, "etc", "shadow"))
			if fi.Mode().Perm() != 0o640 {
				t.Fatalf("mode %v", fi.Mode())
			}
			if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && st.Gid != 42 {
				t.Fatalf("group %d", st.Gid)
			}
			// The key is wiped after use.
			if msg := tp.fails(cmdPassword, tc.encrypt(dh, t, "again\n")); !strings.Contains(msg, "keyinit") {
				t.Fatalf("second password: %q", msg)
			}
		})
	}
}

func TestPasswordSchemes(t *testing.T) {
	for user, prefix := range map[string]string{
		"alice": "$6$",             // yescrypt: not implemented, becomes SHA-512-crypt
		"bob":   "$6$",             // locked $6$: unlocked
		"carol": "$6$rounds=6000$", // rounds kept
	} {
		root := shadowRoot(t)
		tp := newTestPlugin(t, map[string]any{"root": root, "user": user})
		dh := newSimpleDH(t)
		exchange(t, tp, dh, false)
		tp.ok(cmdPassword, dh.encrypt("pw-"+user+"\n"))
		f := shadowEntry(t, root, user)
		if !strings.HasPrefix(f[1], prefix) {
			t.Errorf("%s: hash %q, want prefix %q", user, f[1], prefix)
		}
		if again, _ := shaCrypt([]byte("pw-"+user), f[1]); again != f[1] {
			t.Errorf("%s: hash does not verify", user)
		}
		if !strings.HasPrefix(shadowEntry(t, root, "root")[1], "$5$rounds=8000$oldsaltoldsalt$") {
			t.Errorf("%s: root's line changed", user)
		}
	}
}

func TestPasswordErrors(t *testing.T) {
	root := shadowRoot(t)
	tp := newTestPlugin(t, map[string]any{"root": root})
	dh := newSimpleDH(t)

	if msg := tp.fails(cmdPassword, "AAAAAAAAAAAAAAAAAAAAAA=="); !strings.Contains(msg, "keyinit") {
		t.Errorf("password without keyinit: %q", msg)
	}
	for _, bad := range []any{"x", "1", "0", dhPrime.String(), new(big.Int).Sub(dhPrime, big.NewInt(1)).String(), "-5", json.RawMessage(`[1]`)} {
		tp.fails(cmdKeyinit, bad)
	}

	// A key from another exchange: no derivation gives valid padding; the
	// key is wiped anyway.
	exchange(t, tp, dh, false)
	other := newSimpleDH(t)
	other.shared = big.NewInt(123456789)
	if msg := tp.fails(cmdPassword, other.encrypt("pw\n")); !strings.Contains(msg, "decrypt") {
		t.Errorf("wrong key: %q", msg)
	}
	if msg := tp.fails(cmdPassword, dh.encrypt("pw\n")); !strings.Contains(msg, "keyinit") {
		t.Errorf("key not wiped after a failure: %q", msg)
	}

	exchange(t, tp, dh, false)
	if msg := tp.fails(cmdPassword, "not base64!"); !strings.Contains(msg, "base64") {
		t.Errorf("bad base64: %q", msg)
	}
	exchange(t, tp, dh, false)
	if msg := tp.fails(cmdPassword, base64.StdEncoding.EncodeToString([]byte("short"))); !strings.Contains(msg, "AES blocks") {
		t.Errorf("short ciphertext: %q", msg)
	}
	exchange(t, tp, dh, false)
	if msg := tp.fails(cmdPassword, dh.encrypt("\n")); !strings.Contains(msg, "empty") {
		t.Errorf("empty password: %q", msg)
	}

	// Unknown user: nothing written.
	tp2 := newTestPlugin(t, map[string]any{"root": root, "user": "nobody"})
	exchange(t, tp2, dh, false)
	if msg := tp2.fails(cmdPassword, dh.encrypt("pw\n")); !strings.Contains(msg, "not found") {
		t.Errorf("unknown user: %q", msg)
	}
	if readFile(t, filepath.Join(root, "etc", "shadow")) != shadowFixture {
		t.Error("shadow changed by failed commands")
	}
	if m, _ := filepath.Glob(filepath.Join(root, "etc", ".shadow*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

// A second keyinit replaces the first key.
func TestKeyinitTwice(t *testing.T) {
	root := shadowRoot(t)
	tp := newTestPlugin(t, map[string]any{"root": root})
	first, second := newSimpleDH(t), newSimpleDH(t)
	exchange(t, tp, first, false)
	exchange(t, tp, second, false)
	tp.fails(cmdPassword, first.encrypt("one\n"))
	exchange(t, tp, second, false)
	tp.ok(cmdPassword, second.encrypt("two\n"))
	if f := shadowEntry(t, root, "root"); func() bool { h, _ := shaCrypt([]byte("two"), f[1]); return h != f[1] }() {
		t.Fatal("password two not set")
	}
}

func TestUnpad(t *testing.T) {
	for _, c := range []struct {
		in []byte
		ok bool
	}{
		{append(bytes.Repeat([]byte("a"), 15), 1), true},
		{bytes.Repeat([]byte{16}, 16), true},
		{append(bytes.Repeat([]byte("a"), 14), 2, 2), true},
		{append(bytes.Repeat([]byte("a"), 14), 3, 2), false},
		{append(bytes.Repeat([]byte("a"), 15), 0), false},
		{append(bytes.Repeat([]byte("a"), 15), 17), false},
		{nil, false},
	} {
		if _, ok := unpad(c.in); ok != c.ok {
			t.Errorf("unpad(%v) ok=%v", c.in, ok)
		}
	}
}
