// Package xen tests the nova conversation end to end: the real guest-agent
// supervisor with its real plugin binaries (exchange-xenstore, parser-json,
// cmd-nova) against a real xenstored (Debian's oxenstored, run without a
// hypervisor by shared/xenstore/oxenstored), with xenstore-utils playing
// the host as nova's dom0 plugin does.
//
// The agent talks to xenstored's socket, that is as dom0: relative paths
// resolve under /local/domain/0, so the host writes
// /local/domain/0/data/host/<id> and reads /local/domain/0/data/guest/<id>,
// exactly the keys a guest would see as data/host and data/guest through
// /dev/xen/xenbus.
package xen

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/guest-agent/guest-agent/shared/xenstore/oxenstored"
	"github.com/guest-agent/guest-agent/tests/harness"
)

const (
	domHome  = "/local/domain/0"
	hostDir  = domHome + "/data/host"
	guestDir = domHome + "/data/guest"
)

// answerTimeout covers the agent's start and the lazy start of cmd-nova.
const answerTimeout = 20 * time.Second

// host plays nova's dom0 side: requests go in with xenstore-write, answers
// are read with xenstore-read; a watch on data/guest (through the Go
// client) says when to look, instead of nova's 3-second poll.
type host struct {
	t   *testing.T
	d   *oxenstored.Daemon
	c   *xenstore.Client
	w   *xenstore.Watch
	ctx context.Context
}

func newHost(t *testing.T, d *oxenstored.Daemon) *host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	// Right after a restart oxenstored may still refuse with EAGAIN (its
	// listen backlog is full while the agent reconnects): retry briefly.
	var c *xenstore.Client
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err = xenstore.Dial(ctx, d.Path()); err == nil || !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	w, err := c.Watch(ctx, guestDir, "test-host")
	if err != nil {
		t.Fatal(err)
	}
	return &host{t: t, d: d, c: c, w: w, ctx: ctx}
}

// uuid4 is a request id as nova makes them (str(uuid.uuid4())).
func uuid4() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

type reply struct {
	ReturnCode string `json:"returncode"`
	Message    string `json:"message"`
}

// send writes a raw request and returns its id.
func (h *host) send(raw string) string {
	h.t.Helper()
	id := uuid4()
	if err := h.d.XenstoreWrite(h.ctx, hostDir+"/"+id, raw); err != nil {
		h.t.Fatal(err)
	}
	return id
}

// wait waits for the answer to id and checks the request key is gone.
func (h *host) wait(id string) reply {
	h.t.Helper()
	deadline := time.NewTimer(answerTimeout)
	defer deadline.Stop()
	for {
		if _, err := h.c.Read(h.ctx, guestDir+"/"+id); err == nil {
			break
		} else if !errors.Is(err, xenstore.ErrNotFound) {
			h.t.Fatal(err)
		}
		select {
		case _, ok := <-h.w.Events():
			if !ok {
				h.t.Fatalf("host watch ended: %v", h.w.Err())
			}
		case <-deadline.C:
			h.t.Fatalf("no answer to %s within %s", id, answerTimeout)
		}
	}
	v, err := h.d.XenstoreRead(h.ctx, guestDir+"/"+id)
	if err != nil {
		h.t.Fatal(err)
	}
	var r reply
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		h.t.Fatalf("answer %q is not nova JSON: %v", v, err)
	}
	if _, err := h.d.XenstoreRead(h.ctx, hostDir+"/"+id); err == nil {
		h.t.Fatalf("request %s still present after its answer", id)
	}
	return r
}

// call sends {"name": name, "value": value} and waits for the answer.
func (h *host) call(name string, value any) reply {
	h.t.Helper()
	b, err := json.Marshal(map[string]any{"name": name, "value": value})
	if err != nil {
		h.t.Fatal(err)
	}
	return h.wait(h.send(string(b)))
}

// startAgent runs guest-agent -m xenstore -p <socket> with cmd-nova options.
func startAgent(t testing.TB, d *oxenstored.Daemon, novaOpts map[string]any) *harness.Agent {
	t.Helper()
	var opts []string
	for k, v := range novaOpts {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, fmt.Sprintf("    %s = %s", k, b))
	}
	cfg := "plugin \"cmd-nova\" {\n  options = {\n" + strings.Join(opts, "\n") + "\n  }\n}\n"
	return harness.StartAgent(t, harness.Options{Config: cfg, Args: []string{"-m", "xenstore", "-p", d.Path()}})
}

func TestNovaConversation(t *testing.T) {
	d := oxenstored.Start(t)
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "etc/shadow"), shadowFixture, 0o640)
	startAgent(t, d, map[string]any{"root": root, "xenstore_path": d.Path(), "version": "1.0.0"})
	h := newHost(t, d)

	t.Run("version", func(t *testing.T) {
		h.t = t
		// nova's dom0 plugin sends "value": "" (older ones "agent").
		if r := h.call("version", ""); r != (reply{"0", "1.0.0"}) {
			t.Fatalf("version: %+v", r)
		}
		if r := h.call("version", "agent"); r.ReturnCode != "0" {
			t.Fatalf("version: %+v", r)
		}
	})
	t.Run("features", func(t *testing.T) {
		h.t = t
		r := h.call("features", "")
		if r.ReturnCode != "0" {
			t.Fatalf("features: %+v", r)
		}
		got := map[string]bool{}
		for _, f := range strings.Split(r.Message, ",") {
			got[f] = true
		}
		for _, want := range []string{"version", "features", "keyinit", "password", "injectfile", "file_inject", "resetnetwork", "agentupdate", "kmsactivate"} {
			if !got[want] {
				t.Errorf("features %q lack %s", r.Message, want)
			}
		}
	})
	t.Run("keyinit-password", func(t *testing.T) {
		h.t = t
		for i, asNumber := range []bool{false, true} {
			dh := newSimpleDH(t)
			var pub any = dh.public.String() // newer dom0 plugins: a string
			if asNumber {
				pub = json.RawMessage(dh.public.String()) // older ones: a number
			}
			r := h.call("keyinit", pub)
			if r.ReturnCode != "D0" {
				t.Fatalf("keyinit: %+v", r)
			}
			dh.computeShared(t, r.Message)
			pw := fmt.Sprintf("new-Passw0rd-%d", i)
			// nova: dh.encrypt(new_pass + '\n'), i.e. openssl's output
			// with the newline stripped.
			if r := h.call("password", dh.encrypt(pw+"\n")); r != (reply{"0", ""}) {
				t.Fatalf("password: %+v", r)
			}
			line := shadowLine(t, root, "root")
			if !strings.HasPrefix(line[1], "$6$rounds=7000$") || strings.Contains(line[1], "oldsaltoldsalt") {
				t.Fatalf("root hash %q: want $6$ with the old rounds and a new salt", line[1])
			}
			if !verifyCrypt(t, pw, line[1]) {
				t.Fatalf("hash %q does not verify %q", line[1], pw)
			}
			// The key was wiped: the same ciphertext again fails.
			if r := h.call("password", dh.encrypt(pw+"\n")); r.ReturnCode != "500" || !strings.Contains(r.Message, "keyinit") {
				t.Fatalf("password after use of the key: %+v", r)
			}
		}
	})
	t.Run("injectfile", func(t *testing.T) {
		h.t = t
		contents := "\n# The following ssh key was injected by Nova\nssh-rsa AAAAB3Nza test@host\n"
		val := base64.StdEncoding.EncodeToString([]byte("/root/.ssh/authorized_keys," + contents))
		if r := h.call("injectfile", val); r != (reply{"0", ""}) {
			t.Fatalf("injectfile: %+v", r)
		}
		if got := readFile(t, filepath.Join(root, "root/.ssh/authorized_keys")); got != contents {
			t.Fatalf("injected %q", got)
		}
		// Again: the first version is kept as .bak.<time>.
		if r := h.call("injectfile", base64.StdEncoding.EncodeToString([]byte("/root/.ssh/authorized_keys,second\n"))); r.ReturnCode != "0" {
			t.Fatalf("injectfile: %+v", r)
		}
		baks, _ := filepath.Glob(filepath.Join(root, "root/.ssh/authorized_keys.bak.*"))
		if len(baks) != 1 || readFile(t, baks[0]) != contents {
			t.Fatalf("backups %v", baks)
		}
		// The newer form (nova picks it when "file_inject" is a feature).
		r := h.call("file_inject", map[string]string{
			"b64_path": base64.StdEncoding.EncodeToString([]byte("/etc/motd")),
			"b64_file": base64.StdEncoding.EncodeToString([]byte("hello\n")),
		})
		if r.ReturnCode != "0" || readFile(t, filepath.Join(root, "etc/motd")) != "hello\n" {
			t.Fatalf("file_inject: %+v", r)
		}
	})
	t.Run("errors", func(t *testing.T) {
		h.t = t
		if r := h.call("nosuchcommand", ""); r != (reply{"404", "No such agent command 'nosuchcommand'"}) {
			t.Fatalf("unknown command: %+v", r)
		}
		for _, bad := range []string{`{"name": "version", "value": `, `not json at all`, `{"value": "x"}`, `["version"]`} {
			r := h.wait(h.send(bad))
			if r.ReturnCode != "500" || r.Message == "" {
				t.Fatalf("bad request %q: %+v", bad, r)
			}
		}
		if r := h.call("kmsactivate", ""); r.ReturnCode != "500" || !strings.Contains(r.Message, "not supported") {
			t.Fatalf("kmsactivate: %+v", r)
		}
		if r := h.call("agentupdate", "http://127.0.0.1:1/agent"); r.ReturnCode != "500" || !strings.Contains(r.Message, "checksum") {
			t.Fatalf("agentupdate without checksum: %+v", r)
		}
		// The channel keeps serving.
		if r := h.call("version", ""); r.ReturnCode != "0" {
			t.Fatalf("version after errors: %+v", r)
		}
	})
	t.Run("hundred-at-once", func(t *testing.T) {
		h.t = t
		ids := make([]string, 100)
		pairs := make([]string, 0, 200)
		for i := range ids {
			ids[i] = uuid4()
			pairs = append(pairs, hostDir+"/"+ids[i], `{"name": "version", "value": ""}`)
		}
		// One xenstore-write: 100 keys back to back.
		if err := d.XenstoreWrite(h.ctx, pairs...); err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if r := h.wait(id); r != (reply{"0", "1.0.0"}) {
				t.Fatalf("%s: %+v", id, r)
			}
		}
		if names, err := h.c.Directory(h.ctx, hostDir); err != nil || len(names) != 0 {
			t.Fatalf("requests left: %v %v", names, err)
		}
		// Each answer was written by exactly one committed transaction:
		// oxenstored's own access log says so.
		time.Sleep(200 * time.Millisecond)
		writes := committedWrites(t, d)
		for _, id := range ids {
			if n := writes["data/guest/"+id]; n != 1 {
				t.Errorf("answer %s written %d times", id, n)
			}
		}
	})
}

// committedWrites counts, per path, the WRITEs oxenstored applied:
// outside transactions, or in a transaction that committed. It reads the
// access log the oxenstored harness configures (access.log in the daemon's
// directory, the parent of its socket directory).
func committedWrites(t *testing.T, d *oxenstored.Daemon) map[string]int {
	t.Helper()
	path := filepath.Join(filepath.Dir(filepath.Dir(d.Path())), "access.log")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("oxenstored access log: %v", err)
	}
	// Lines: "[time]  A4.1         write     data/guest/<id> <value>";
	// "A4" is a connection, "A4.1" its transaction 1.
	out := map[string]int{}
	pending := map[string][]string{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		conn, op := f[1], f[2]
		switch {
		case op == "write" && len(f) >= 4:
			if strings.Contains(conn, ".") {
				pending[conn] = append(pending[conn], f[3])
			} else {
				out[f[3]]++
			}
		case op == "commit":
			for _, p := range pending[conn] {
				out[p]++
			}
			delete(pending, conn)
		}
	}
	return out
}

// Requests already waiting when the agent starts are served; a restart of
// xenstored (a fresh, empty one) is survived: the agent reconnects,
// recreates data/host, watches again and serves new requests.
func TestWaitingRequestsAndXenstoredRestart(t *testing.T) {
	d := oxenstored.Start(t)
	h := newHost(t, d)
	var early []string
	for range 5 {
		early = append(early, h.send(`{"name": "features", "value": ""}`))
	}
	startAgent(t, d, map[string]any{"version": "2.0"})
	for _, id := range early {
		if r := h.wait(id); r.ReturnCode != "0" || !strings.Contains(r.Message, "resetnetwork") {
			t.Fatalf("waiting request: %+v", r)
		}
	}

	d.Restart(t)
	// The host's own connection died with the daemon too.
	h = newHost(t, d)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := h.c.Read(h.ctx, hostDir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent did not recreate data/host after xenstored restarted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := h.call("version", ""); r != (reply{"0", "2.0"}) {
		t.Fatalf("after restart: %+v", r)
	}
}

// Diffie-Hellman exactly as nova's SimpleDH (nova/virt/xenapi/agent.py).
type simpleDH struct {
	prime, private, public, shared *big.Int
}

func newSimpleDH(t *testing.T) *simpleDH {
	prime, _ := new(big.Int).SetString("162259276829213363391578010288127", 10)
	b := make([]byte, 10) // int(binascii.hexlify(os.urandom(10)), 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	dh := &simpleDH{prime: prime, private: new(big.Int).SetBytes(b)}
	dh.public = new(big.Int).Exp(big.NewInt(5), dh.private, prime)
	return dh
}

func (dh *simpleDH) computeShared(t *testing.T, agentPub string) {
	other, ok := new(big.Int).SetString(agentPub, 10)
	if !ok {
		t.Fatalf("agent public key %q", agentPub)
	}
	dh.shared = new(big.Int).Exp(other, dh.private, dh.prime)
}

// encrypt is `openssl aes-128-cbc -A -a -pass pass:<shared> -nosalt` of
// nova's time (MD5 EVP_BytesToKey), .strip('\n').
func (dh *simpleDH) encrypt(text string) string {
	pass := []byte(dh.shared.String())
	key := md5.Sum(pass)
	iv := md5.Sum(append(key[:], pass...))
	block, _ := aes.NewCipher(key[:])
	pad := aes.BlockSize - len(text)%aes.BlockSize
	pt := []byte(text + strings.Repeat(string(rune(pad)), pad))
	ct := make([]byte, len(pt))
	cipher.NewCBCEncrypter(block, iv[:]).CryptBlocks(ct, pt)
	return base64.StdEncoding.EncodeToString(ct)
}

const shadowFixture = "root:$6$rounds=7000$oldsaltoldsalt$xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx:19000:0:99999:7:::\n" +
	"daemon:*:19000:0:99999:7:::\n"

func shadowLine(t *testing.T, root, user string) []string {
	t.Helper()
	for _, line := range strings.Split(readFile(t, filepath.Join(root, "etc/shadow")), "\n") {
		if f := strings.Split(line, ":"); f[0] == user {
			return f
		}
	}
	t.Fatalf("%s not in shadow", user)
	return nil
}

// verifyCrypt checks a hash with the system's crypt(3), through perl (in
// Debian's perl-base).
func verifyCrypt(t *testing.T, password, hash string) bool {
	t.Helper()
	perl, err := exec.LookPath("perl")
	if err != nil {
		t.Skip("perl not installed: cannot verify the hash with crypt(3)")
	}
	out, err := exec.Command(perl, "-e", `print crypt($ARGV[0], $ARGV[1])`, "--", password, hash).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out) == hash
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
