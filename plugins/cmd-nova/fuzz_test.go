package main

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// Fuzz targets for the values a nova host sends: keyinit's public key,
// password's ciphertext, resetnetwork's JSON from vm-data/networking and
// injectfile's base64.

func sdkError(t *testing.T, what string, err error) {
	t.Helper()
	if se, ok := err.(*sdk.Error); !ok || se.Class != sdk.ClassGenericError || se.Desc == "" {
		t.Fatalf("%s: %T %v, want a GenericError", what, err, err)
	}
}

// FuzzKeyinit: any value is a public key or a refusal, never a panic. A
// key is accepted exactly when it is a decimal integer (string or JSON
// number) strictly between 1 and p-1, and then the answer is ours with
// code D0, and the secret kept is the host's key to our private power.
func FuzzKeyinit(f *testing.F) {
	pm1 := new(big.Int).Sub(dhPrime, big.NewInt(1))
	for _, s := range []string{
		`{"value":"12345"}`, `{"value":12345}`, `{"value":" 12345 "}`, `{"value":"+7"}`,
		`{"value":"1"}`, `{"value":"2"}`, `{"value":"0"}`, `{"value":"-5"}`,
		`{"value":"` + pm1.String() + `"}`, `{"value":"` + dhPrime.String() + `"}`, `{"value":` + new(big.Int).Sub(pm1, big.NewInt(1)).String() + `}`,
		`{"value":"1e5"}`, `{"value":1e5}`, `{"value":1.5}`, `{"value":"0x10"}`, `{"value":"1_000"}`,
		`{"value":null}`, `{"value":""}`, `{"value":[1]}`, `{"value":{}}`, `{}`, `{"value":"1","x":2}`,
		`{"value":"` + strings.Repeat("9", 5000) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, args []byte) {
		n := newNova()
		got, err := n.keyinit(context.Background(), &sdk.Call{Command: cmdKeyinit, Args: args})

		// The model: {"value": decimal string or number}.
		var a struct{ Value json.RawMessage }
		var host *big.Int
		if json.Unmarshal(args, &a) == nil {
			var s string
			var num json.Number
			if json.Unmarshal(a.Value, &s) == nil {
			} else if json.Unmarshal(a.Value, &num) == nil {
				s = num.String()
			}
			if v, ok := new(big.Int).SetString(strings.TrimSpace(s), 10); ok && v.Cmp(big.NewInt(1)) > 0 && v.Cmp(pm1) < 0 {
				host = v
			}
		}
		if err != nil {
			sdkError(t, string(args), err)
			if host != nil && sdk.DecodeArgs(args, &valueArg{}) == nil {
				t.Fatalf("%s: public key %v refused: %v", args, host, err)
			}
			return
		}
		if host == nil {
			t.Fatalf("%s accepted", args)
		}
		r, ok := got.(novaReply)
		ours, okNum := new(big.Int).SetString(r.Message, 10)
		if !ok || r.ReturnCode != "D0" || !okNum || ours.Sign() <= 0 || ours.Cmp(dhPrime) >= 0 {
			t.Fatalf("%s: answer %+v", args, got)
		}
		if n.key == nil {
			t.Fatalf("%s: no secret kept", args)
		}
		if secret, ok := new(big.Int).SetString(string(n.key.secret), 10); !ok || secret.Sign() < 0 || secret.Cmp(dhPrime) >= 0 {
			t.Fatalf("%s: secret %q", args, n.key.secret)
		}
	})
}

// opensslEncrypt is `openssl aes-128-cbc -nosalt -pass pass:<secret>` with
// the md5 (nova's hosts of old) or the sha256 (OpenSSL 1.1.0 and later)
// key derivation.
func opensslEncrypt(secret, text []byte, sha bool) []byte {
	kdf := kdfs[0]
	if sha {
		kdf = kdfs[1]
	}
	key, iv := kdf.derive(secret)
	block, _ := aes.NewCipher(key)
	pad := aes.BlockSize - len(text)%aes.BlockSize
	pt := append(append([]byte(nil), text...), bytes.Repeat([]byte{byte(pad)}, pad)...)
	ct := make([]byte, len(pt))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, pt)
	return ct
}

// FuzzKeyExchange: the whole exchange as a host runs it. For any host
// private key, keyinit leaves the secret the host computes from our
// answer, and a password the host encrypts under it (either key
// derivation, base64 cut in lines or not) decrypts to itself when it is a
// printable password.
func FuzzKeyExchange(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, false, "s3cret passw0rd", false, uint8(0))
	f.Add([]byte{0xff}, true, "pässwörd\n", true, uint8(3))
	f.Add([]byte{7}, false, "", false, uint8(1))
	f.Add([]byte{7}, true, "\x00\x01", true, uint8(0))
	f.Fuzz(func(t *testing.T, private []byte, asNumber bool, password string, sha bool, wrap uint8) {
		b := new(big.Int).SetBytes(private)
		hostPub := new(big.Int).Exp(dhBase, b, dhPrime)
		if hostPub.Cmp(big.NewInt(1)) <= 0 || hostPub.Cmp(new(big.Int).Sub(dhPrime, big.NewInt(1))) >= 0 {
			return // a key the agent rightly refuses
		}
		value := `"` + hostPub.String() + `"`
		if asNumber {
			value = hostPub.String()
		}
		n := newNova()
		got, err := n.keyinit(context.Background(), &sdk.Call{Command: cmdKeyinit, Args: []byte(`{"value":` + value + `}`)})
		if err != nil {
			t.Fatalf("keyinit %s: %v", value, err)
		}
		ours, _ := new(big.Int).SetString(got.(novaReply).Message, 10)
		shared := new(big.Int).Exp(ours, b, dhPrime).String()
		if string(n.key.secret) != shared {
			t.Fatalf("secret %q, the host computes %q", n.key.secret, shared)
		}
		ct := opensslEncrypt([]byte(shared), []byte(password), sha)
		text := base64.StdEncoding.EncodeToString(ct)
		if wrap > 0 { // openssl without -A: lines of 64
			var w strings.Builder
			for i := 0; i < len(text); i += 4 * int(wrap) {
				w.WriteString(text[i:min(len(text), i+4*int(wrap))] + "\n")
			}
			text = w.String()
		}
		decoded, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(text), ""))
		if err != nil {
			t.Fatal(err)
		}
		pw, err := decryptPassword(n.key.secret, decoded)
		if !utf8.ValidString(password) || !plausible([]byte(password)) {
			return // refused, or (rarely) read as another printable text by the other derivation
		}
		if err != nil || string(pw) != password {
			t.Fatalf("password %q decrypted as %q (%v)", password, pw, err)
		}
	})
}

// FuzzPasswordCiphertext: any ciphertext under any secret decrypts to a
// printable password or is refused with a GenericError; never a panic.
func FuzzPasswordCiphertext(f *testing.F) {
	f.Add([]byte("12345678901234567890"), opensslEncrypt([]byte("12345678901234567890"), []byte("pw"), false))
	f.Add([]byte("1"), opensslEncrypt([]byte("1"), []byte("pw\n"), true))
	f.Add([]byte("1"), []byte{})
	f.Add([]byte("1"), make([]byte, 15))
	f.Add([]byte("1"), make([]byte, 32))
	f.Fuzz(func(t *testing.T, secret, ct []byte) {
		pw, err := decryptPassword(secret, ct)
		if err != nil {
			sdkError(t, "decrypt", err)
			return
		}
		if len(ct) == 0 || len(ct)%aes.BlockSize != 0 || !plausible(pw) {
			t.Fatalf("%d byte ciphertext decrypted to %q", len(ct), pw)
		}
	})
}

var testLinks = map[string]string{"de:ad:be:ef:00:01": "eth0", "de:ad:be:ef:00:02": "eth1"}

// lineBreaks are what some reader of the files written takes for the end
// of a line: YAML (netplan) counts NEL, LS and PS; shells and key files
// "\n"; everything "\r", "\v" and "\f" at least as trouble.
var lineBreaks = []string{"\r", "\v", "\f", "\u0085", "\u2028", "\u2029"}

// FuzzNetworkEntry: whatever JSON the host stores for an interface (and
// as the hostname), resetnetwork refuses it with a GenericError or renders
// files for every backend in which nothing the host wrote breaks out of
// its place: addresses are addresses (no zone, nothing but their own
// characters), the label stays on its comment line, there is no line
// break a reader could see but "\n", and no control character but tab.
func FuzzNetworkEntry(f *testing.F) {
	for _, s := range []struct{ entry, hostname string }{
		{`{"label":"public","mac":"DE:AD:BE:EF:00:01","ips":[{"ip":"192.0.2.10","netmask":"255.255.255.0","enabled":"1"}],` +
			`"gateway":"192.0.2.1","dns":["192.0.2.53","2001:db8::53"],"ip6s":[{"ip":"2001:db8::10","netmask":64,"enabled":"1"}],` +
			`"gateway_v6":"2001:db8::1","routes":[{"route":"198.51.100.0","netmask":"255.255.255.0","gateway":"192.0.2.254"}]}`, "vm-1.example.org"},
		{`{"ips":[{"address":"192.0.2.10","netmask":24}]}`, ""},
		{`{"label":"evil\u2028    eth9: {dhcp4: true}","ips":[{"ip":"192.0.2.10","netmask":"24"}]}`, ""},
		{`{"label":"x\u0085y\r\nz","ips":[{"ip":"192.0.2.10","netmask":"24"}]}`, ""},
		{`{"ips":[{"ip":"192.0.2.10","netmask":"24"}],"ip6s":[{"ip":"fe80::1%eth0\nup touch /tmp/pwned"}]}`, ""},
		{`{"ips":[{"ip":"192.0.2.10","netmask":"24"}],"dns":["fe80::53%x\nnameserver 203.0.113.66"]}`, ""},
		{`{"ip6s":[{"ip":"2001:db8::10"}],"gateway_v6":"fe80::1%eth0"}`, ""},
		{`{"ips":[{"ip":"192.0.2.10","netmask":"255.0.255.0"}]}`, ""},
		{`{"ips":[{"ip":"192.0.2.10","netmask":"33"}]}`, ""},
		{`{"ips":[{"ip":"::ffff:192.0.2.10","netmask":"24"}]}`, ""},
		{`{"ips":[{"ip":"192.0.2.10","netmask":"24","enabled":"0"}]}`, ""},
		{`{"ips":[{"ip":"192.0.2.10","netmask":"24"}],"routes":[{"route":"2001:db8::","netmask":"64","gateway":"192.0.2.1"}]}`, ""},
		{`{"mac":"de:ad:be:ef:00:99","ips":[{"ip":"192.0.2.10","netmask":"24"}]}`, ""},
		{`{"mac":"zz","ips":[]}`, "-bad-"},
		{`{"ips":"x"}`, "a..b"},
		{`[]`, strings.Repeat("a", 64)},
	} {
		f.Add([]byte(s.entry), s.hostname)
	}
	f.Fuzz(func(t *testing.T, entry []byte, hostname string) {
		entries := map[string][]byte{"deadbeef0001": entry}
		cfg, err := buildConfig(entries, hostname, testLinks, func(string, ...any) {})
		if err != nil {
			sdkError(t, string(entry), err)
			return
		}
		for _, it := range cfg.Ifaces {
			for _, l := range lineBreaks {
				if strings.Contains(it.Label, l) {
					t.Fatalf("%s: label %q keeps a line break %q", entry, it.Label, l)
				}
			}
			var addrs []netip.Addr
			for _, p := range append(append([]netip.Prefix{}, it.IPv4...), it.IPv6...) {
				addrs = append(addrs, p.Addr())
			}
			for _, r := range it.Routes {
				addrs = append(addrs, r.To.Addr(), r.Via)
			}
			addrs = append(addrs, it.DNS...)
			for _, a := range []netip.Addr{it.Gateway4, it.Gateway6} {
				if a.IsValid() {
					addrs = append(addrs, a)
				}
			}
			for _, a := range addrs {
				if a.Zone() != "" || strings.Trim(a.String(), "0123456789abcdef:.") != "" {
					t.Fatalf("%s: address %q is more than an address", entry, a)
				}
			}
		}
		opts := defaultOptions()
		opts.Root = t.TempDir()
		for _, backend := range []string{backendIfupdown, backendNetplan, backendNM, backendNetworkd, backendIfcfg} {
			files, err := renderNetwork(backend, cfg, &opts)
			if err != nil {
				t.Fatalf("%s: render %s: %v", entry, backend, err)
			}
			for _, file := range files {
				text := string(file.data)
				for _, l := range lineBreaks {
					if strings.Contains(text, l) {
						t.Fatalf("%s: %s %s holds line break %q:\n%s", entry, backend, file.path, l, text)
					}
				}
				for _, c := range text {
					if c < 0x20 && c != '\n' && c != '\t' || c == 0x7f || c >= 0x80 && c < 0xa0 {
						t.Fatalf("%s: %s %s holds control character %q:\n%s", entry, backend, file.path, c, text)
					}
				}
				for _, line := range strings.Split(text, "\n") {
					if strings.Contains(line, "Label ") && !strings.HasPrefix(strings.TrimSpace(line), "# Label ") {
						t.Fatalf("%s: %s %s: label outside its comment: %q", entry, backend, file.path, line)
					}
				}
			}
		}
	})
}

// FuzzInjectfile: any value is written as one file under the root or
// refused with a GenericError; nothing is ever written outside the root,
// and what is written is the base64's contents after the first comma.
func FuzzInjectfile(f *testing.F) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, s := range []string{
		b64("/etc/motd,hello\n"),
		b64("/etc/motd,hello")[:10] + "\n" + b64("/etc/motd,hello")[10:],
		strings.TrimRight(b64("/etc/x,y"), "="),
		b64("/../../escape,x"),
		b64("relative,x"),
		b64("/no-comma"),
		b64("/a/b/c,with,commas"),
		b64("/,root itself"),
		b64("/etc/x\x00y,z"),
		"not base64!",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		parent := t.TempDir()
		root := filepath.Join(parent, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		n := newNova()
		n.opts.Root = root
		args, _ := json.Marshal(map[string]string{"value": value})
		_, err := n.injectfile(context.Background(), &sdk.Call{Command: cmdInjectfile, Args: args})
		if ents, _ := os.ReadDir(parent); len(ents) != 1 {
			t.Fatalf("%q: %d entries beside the root", value, len(ents))
		}
		var written []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				written = append(written, p)
			}
			return nil
		})
		if err != nil {
			if _, ok := err.(*sdk.Error); !ok && !strings.HasPrefix(err.Error(), "injectfile: ") {
				t.Fatalf("%q: %T %v", value, err, err)
			}
			if len(written) != 0 {
				t.Fatalf("%q refused (%v) but %q written", value, err, written)
			}
			return
		}
		raw, derr := decodeB64(value)
		path, contents, ok := strings.Cut(string(raw), ",")
		if derr != nil || !ok {
			t.Fatalf("%q accepted: %v", value, derr)
		}
		target := filepath.Join(root, filepath.Clean("/"+path))
		if len(written) != 1 || written[0] != target {
			t.Fatalf("%q: wrote %q, want %q", value, written, target)
		}
		if got, _ := os.ReadFile(target); string(got) != contents {
			t.Fatalf("%q: %s holds %q, want %q", value, target, got, contents)
		}
	})
}
