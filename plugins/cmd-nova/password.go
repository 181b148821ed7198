package main

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/big"
	"strings"
	"unicode/utf8"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// The Diffie-Hellman group of nova's SimpleDH and nova-agent: p = 2^107-1
// (a Mersenne prime), g = 5. Far too small to protect anything today; it is
// what the host speaks, and XenStore is only readable by dom0 anyway.
var (
	dhPrime = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 107), big.NewInt(1))
	dhBase  = big.NewInt(5)
)

// privateKeyBits is nova-agent's private key size (16 random bytes).
const privateKeyBits = 128

// sessionKey is the shared secret of the last keyinit, as the decimal text
// both sides feed to OpenSSL's key derivation.
type sessionKey struct {
	secret []byte
}

func (k *sessionKey) wipe() {
	clear(k.secret)
	k.secret = nil
}

// wipeInt zeroes a big.Int's words; big.Int offers no other way to drop a
// secret.
func wipeInt(x *big.Int) {
	clear(x.Bits())
	x.SetInt64(0)
}

func (n *nova) passwordCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        cmdKeyinit,
		Description: "nova: Diffie-Hellman key exchange; value is the host's public key, the reply (code D0) ours",
		ArgsSchema:  `{"type":"object","required":["value"],"properties":{"value":{"type":["string","integer"]}}}`,
		Handler:     n.keyinit,
	}, {
		Name:        cmdPassword,
		Description: "nova: set the password of the configured user (root); value is base64 AES-128-CBC under the keyinit secret",
		ArgsSchema:  `{"type":"object","required":["value"],"properties":{"value":{"type":"string","contentEncoding":"base64"}}}`,
		Handler:     n.password,
	}}
}

// keyinit computes our key pair and the shared secret, keeps the secret for
// the next password command and answers our public key with code "D0".
func (n *nova) keyinit(_ context.Context, call *sdk.Call) (any, error) {
	v, err := stringValue(call)
	if err != nil {
		return nil, err
	}
	hostPub, ok := new(big.Int).SetString(strings.TrimSpace(v), 10)
	// 1 and p-1 would make the secret guessable.
	pm1 := new(big.Int).Sub(dhPrime, big.NewInt(1))
	if !ok || hostPub.Cmp(big.NewInt(1)) <= 0 || hostPub.Cmp(pm1) >= 0 {
		return nil, sdk.Errorf("keyinit: invalid public key %s", quote(v))
	}
	priv, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), privateKeyBits))
	if err != nil {
		return nil, fmt.Errorf("keyinit: random private key: %w", err)
	}
	defer wipeInt(priv)
	if priv.Sign() == 0 {
		priv.SetInt64(1)
	}
	ours := new(big.Int).Exp(dhBase, priv, dhPrime)
	shared := new(big.Int).Exp(hostPub, priv, dhPrime)
	key := &sessionKey{secret: []byte(shared.String())}
	wipeInt(shared)

	n.keyMu.Lock()
	if n.key != nil {
		n.key.wipe()
	}
	n.key = key
	n.keyMu.Unlock()
	n.log.Info("keyinit: key exchanged")
	return novaReply{ReturnCode: "D0", Message: ours.String()}, nil
}

// password decrypts the new password with the key of the last keyinit,
// which it wipes whatever the outcome, and sets it in /etc/shadow.
func (n *nova) password(ctx context.Context, call *sdk.Call) (any, error) {
	v, err := stringValue(call)
	if err != nil {
		return nil, err
	}
	n.keyMu.Lock()
	key := n.key
	n.key = nil
	n.keyMu.Unlock()
	if key == nil {
		return nil, sdk.Errorf("password: no key exchange: send keyinit first")
	}
	defer key.wipe()

	ct, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(v), ""))
	if err != nil {
		return nil, sdk.Errorf("password: value is not base64: %v", err)
	}
	pw, err := decryptPassword(key.secret, ct)
	if err != nil {
		return nil, err
	}
	defer clear(pw)
	// nova appends "\n" for old agents; a password never ends in one.
	pw = bytes.TrimRight(pw, "\r\n")
	if len(pw) == 0 {
		return nil, sdk.Errorf("password: the new password is empty")
	}
	if err := setShadowPassword(ctx, &n.opts, n.opts.User, pw, n.now(), n.log); err != nil {
		return nil, err
	}
	n.log.Info("password changed", "user", n.opts.User)
	return "", nil
}

// kdf is one of OpenSSL's EVP_BytesToKey derivations for
// `openssl enc -aes-128-cbc -nosalt -pass pass:<secret>`: one round, no
// salt, key and IV taken from the concatenated digests.
type kdf struct {
	name   string
	derive func(pass []byte) (key, iv []byte)
}

var kdfs = []kdf{
	// OpenSSL before 1.1.0 (and nova's hosts of that time): -md md5.
	{"md5", func(pass []byte) ([]byte, []byte) {
		d1 := md5.Sum(pass)
		d2 := md5.Sum(append(d1[:], pass...))
		return d1[:], d2[:]
	}},
	// OpenSSL 1.1.0 and later default to -md sha256: one digest is 32
	// bytes, key then IV.
	{"sha256", func(pass []byte) ([]byte, []byte) {
		d := sha256.Sum256(pass)
		return d[:16], d[16:]
	}},
}

// decryptPassword tries each derivation in turn: a wrong one shows as
// invalid padding or, in the rare case the padding looks valid, as a
// plaintext that is not a printable password.
func decryptPassword(secret, ct []byte) ([]byte, error) {
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, sdk.Errorf("password: ciphertext of %d bytes is not a whole number of AES blocks", len(ct))
	}
	for _, k := range kdfs {
		key, iv := k.derive(secret)
		block, err := aes.NewCipher(key)
		clear(key)
		if err != nil {
			return nil, fmt.Errorf("password: %w", err)
		}
		pt := make([]byte, len(ct))
		cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
		if out, ok := unpad(pt); ok && plausible(out) {
			return out, nil
		}
		clear(pt)
	}
	return nil, sdk.Errorf("password: cannot decrypt the password (no key derivation gives valid padding): was keyinit sent by the same host?")
}

// unpad strips PKCS#7 padding, checking every padding byte.
func unpad(b []byte) ([]byte, bool) {
	if len(b) == 0 {
		return nil, false
	}
	n := int(b[len(b)-1])
	if n == 0 || n > aes.BlockSize || n > len(b) {
		return nil, false
	}
	for _, c := range b[len(b)-n:] {
		if int(c) != n {
			return nil, false
		}
	}
	return b[:len(b)-n], true
}

// plausible reports whether a decrypted password looks like text.
func plausible(pw []byte) bool {
	if !utf8.Valid(pw) {
		return false
	}
	for _, c := range pw {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
