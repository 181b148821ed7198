package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func (s *system) passwordCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        "guest-set-user-password",
		Description: "Set a user's password (base64; crypted: already crypt()ed) through chpasswd",
		ArgsSchema: `{"type":"object","required":["username","password","crypted"],"properties":{"username":{"type":"string"},` +
			`"password":{"type":"string","contentEncoding":"base64"},"crypted":{"type":"boolean"}},"additionalProperties":false}`,
		Handler: s.setUserPassword,
	}}
}

// setUserPassword feeds "user:password\n" to chpasswd's stdin, never to a
// shell or the command line (where ps would show it).
func (s *system) setUserPassword(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Username string `json:"username"`
		Password string `json:"password"`
		Crypted  bool   `json:"crypted"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	raw, err := qbase64Decode(a.Password)
	if err != nil {
		return nil, err
	}
	// qemu-ga handles the password as a C string: it ends at a NUL byte.
	if i := bytes.IndexByte(raw, 0); i >= 0 {
		raw = raw[:i]
	}
	if bytes.ContainsRune(raw, '\n') {
		return nil, sdk.Errorf("forbidden characters in raw password")
	}
	if strings.ContainsAny(a.Username, "\n:") {
		return nil, sdk.Errorf("forbidden characters in username")
	}
	argv := []string{s.opts.ChpasswdPath}
	if a.Crypted {
		argv = append(argv, "-e")
	}
	if s.opts.Root != "/" {
		argv = append(argv, "-R", s.opts.Root)
	}
	input := make([]byte, 0, len(a.Username)+len(raw)+2)
	input = append(append(append(append(input, a.Username...), ':'), raw...), '\n')
	s.log.Info("setting user password", "user", a.Username, "crypted", a.Crypted)
	if err := s.runCommand(ctx, argv, input, "set user password"); err != nil {
		return nil, err
	}
	return nil, nil
}

// qbase64Decode decodes like QEMU's qbase64_decode(): the standard alphabet,
// '=' and newlines only, then glib's decoder, which drops an incomplete last
// group of characters. Unlike glib, a '=' inside the data is refused.
func qbase64Decode(in string) ([]byte, error) {
	if strings.IndexByte(in, 0) >= 0 {
		return nil, sdk.Errorf("Base64 data contains embedded NUL characters")
	}
	for _, c := range []byte(in) {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=' || c == '\n') {
			return nil, sdk.Errorf("Base64 data contains invalid characters")
		}
	}
	clean := strings.ReplaceAll(in, "\n", "")
	clean = clean[:len(clean)-len(clean)%4]
	out, err := base64.StdEncoding.DecodeString(clean)
	if err != nil {
		return nil, sdk.Errorf("Base64 data contains invalid characters")
	}
	return out, nil
}
