package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

func (s *system) sshCommands() []sdk.Command {
	keysSchema := `{"type":"array","items":{"type":"string"}}`
	return []sdk.Command{
		{
			Name:        "guest-ssh-get-authorized-keys",
			Description: "Get the public keys of a user's ~/.ssh/authorized_keys",
			ArgsSchema:  `{"type":"object","required":["username"],"properties":{"username":{"type":"string"}},"additionalProperties":false}`,
			Handler:     s.sshGetKeys,
		},
		{
			Name:        "guest-ssh-add-authorized-keys",
			Description: "Add public keys to a user's ~/.ssh/authorized_keys (reset: replace its content)",
			ArgsSchema: `{"type":"object","required":["username","keys"],"properties":{"username":{"type":"string"},"keys":` + keysSchema +
				`,"reset":{"type":"boolean"}},"additionalProperties":false}`,
			Handler: s.sshAddKeys,
		},
		{
			Name:        "guest-ssh-remove-authorized-keys",
			Description: "Remove public keys from a user's ~/.ssh/authorized_keys",
			ArgsSchema:  `{"type":"object","required":["username","keys"],"properties":{"username":{"type":"string"},"keys":` + keysSchema + `},"additionalProperties":false}`,
			Handler:     s.sshRemoveKeys,
		},
	}
}

type passwdEntry struct {
	name     string
	uid, gid int
	home     string
}

// lookupUser reads the passwd file of the guest's tree. The static plugin
// has no NSS: users known only to LDAP or sssd are not found. qemu-ga's
// "not found" text ends with glib's message for errno 0, "Success".
func (s *system) lookupUser(name string) (*passwdEntry, error) {
	data, err := s.readFileLimited(s.rootPath("/etc/passwd"))
	if err != nil {
		return nil, sdk.Errorf("failed to lookup user '%s': %s", name, strerror(err))
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 7 || f[0] != name || name == "" {
			continue
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		return &passwdEntry{name: name, uid: uid, gid: gid, home: f[5]}, nil
	}
	return nil, sdk.Errorf("failed to lookup user '%s': Success", name)
}

// checkKeys is qemu-ga's sanity check of a public key.
func checkKeys(keys []string) error {
	for _, k := range keys {
		if strings.HasPrefix(k, "#") || strings.Contains(k, "\n") {
			return sdk.Errorf("invalid OpenSSH public key: '%s'", k)
		}
	}
	return nil
}

// sshDir is the user's ~/.ssh, opened without following a symlink: the agent
// runs as root and must not be steered by a user's symlink into writing, and
// chowning to that user, a file elsewhere (say /root/.ssh).
type sshDir struct {
	fd   int
	path string // for messages
	user *passwdEntry
}

func (d *sshDir) close() { unix.Close(d.fd) }

func (d *sshDir) keysPath() string { return filepath.Join(d.path, "authorized_keys") }

// openSSHDir opens ~/.ssh; with create it makes the directory, owned by the
// user with mode 0700, when missing. A missing directory without create is
// (nil, nil).
func (s *system) openSSHDir(u *passwdEntry, create bool) (*sshDir, error) {
	home := s.rootPath(u.home)
	path := filepath.Join(home, ".ssh")
	homeFd, err := unix.Open(home, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if !create && errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, sdk.Errorf("failed to create directory '%s': %s", path, strerror(err))
	}
	defer unix.Close(homeFd)
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(homeFd, ".ssh", flags, 0)
	if errors.Is(err, unix.ENOENT) {
		if !create {
			return nil, nil
		}
		if err := unix.Mkdirat(homeFd, ".ssh", 0o700); err != nil {
			return nil, sdk.Errorf("failed to create directory '%s': %s", path, strerror(err))
		}
		if fd, err = unix.Openat(homeFd, ".ssh", flags, 0); err != nil {
			return nil, sdk.Errorf("failed to create directory '%s': %s", path, strerror(err))
		}
		if err := unix.Fchown(fd, u.uid, u.gid); err != nil {
			unix.Close(fd)
			return nil, sdk.Errorf("failed to set ownership of directory '%s': %s", path, strerror(err))
		}
		// Set explicitly: mkdir's mode went through the umask.
		if err := unix.Fchmod(fd, 0o700); err != nil {
			unix.Close(fd)
			return nil, sdk.Errorf("failed to set permissions of directory '%s': %s", path, strerror(err))
		}
		s.log.Info("created ssh directory", "path", path, "user", u.name)
	} else if err != nil {
		return nil, sdk.Errorf("failed to open directory '%s': %s", path, strerror(err))
	}
	return &sshDir{fd: fd, path: path, user: u}, nil
}

// readKeys returns the lines of authorized_keys, without the final empty
// one a trailing newline makes. The error texts are glib's, as qemu-ga
// quotes them. The file is opened non-blocking and must be a regular file:
// a FIFO planted by the user would hang the plugin. Before a rewrite
// (forUpdate) it must also be the file itself, not a symlink or a hard link:
// its content ends up in a file the user owns, and the user must not be
// able to pull /etc/shadow into it.
func (s *system) readKeys(d *sshDir, forUpdate bool) ([]string, error) {
	path := d.keysPath()
	flags := unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK
	if forUpdate {
		flags |= unix.O_NOFOLLOW
	}
	fd, err := unix.Openat(d.fd, "authorized_keys", flags, 0)
	if err != nil {
		return nil, &keysErr{fmt.Sprintf("failed to read '%s': Failed to open file “%s”: %s", path, path, strerror(err)), err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &keysErr{fmt.Sprintf("failed to read '%s': %s", path, strerror(err)), err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || (forUpdate && st.Nlink > 1) {
		return nil, &keysErr{fmt.Sprintf("failed to read '%s': not a regular file of its own", path), unix.EINVAL}
	}
	data, err := io.ReadAll(io.LimitReader(f, s.opts.MaxFileBytes+1))
	if err != nil {
		return nil, &keysErr{fmt.Sprintf("failed to read '%s': Failed to read from file “%s”: %s", path, path, strerror(err)), err}
	}
	if int64(len(data)) > s.opts.MaxFileBytes {
		return nil, &keysErr{fmt.Sprintf("failed to read '%s': file larger than %d bytes", path, s.opts.MaxFileBytes), unix.EFBIG}
	}
	if len(data) == 0 {
		return []string{}, nil
	}
	lines := strings.Split(string(data), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines, nil
}

// keysErr is a read failure of authorized_keys, with its qemu-ga text.
type keysErr struct {
	msg string
	err error
}

func (e *keysErr) Error() string { return e.msg }
func (e *keysErr) Unwrap() error { return e.err }

// writeKeys replaces authorized_keys atomically: a temporary file in the
// same directory, owned by the user with mode 0600 before it holds a byte,
// synced, then renamed over the old one. Readers (sshd) see the old or the
// new file, never a partial one.
func (s *system) writeKeys(d *sshDir, lines []string) error {
	path := d.keysPath()
	var sb strings.Builder
	for _, l := range lines {
		sb.WriteString(l)
		sb.WriteByte('\n')
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return sdk.Errorf("failed to write to '%s': %s", path, err)
	}
	tmp := ".authorized_keys." + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(d.fd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return sdk.Errorf("failed to write to '%s': %s", path, strerror(err))
	}
	f := os.NewFile(uintptr(fd), tmp)
	committed := false
	defer func() {
		f.Close()
		if !committed {
			unix.Unlinkat(d.fd, tmp, 0)
		}
	}()
	if err := unix.Fchown(fd, d.user.uid, d.user.gid); err != nil {
		// "directory" is in qemu-ga's text too.
		return sdk.Errorf("failed to set ownership of directory '%s': %s", path, strerror(err))
	}
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return sdk.Errorf("failed to set permissions of '%s': %s", path, strerror(err))
	}
	if _, err := f.WriteString(sb.String()); err != nil {
		return sdk.Errorf("failed to write to '%s': %s", path, strerror(err))
	}
	if err := f.Sync(); err != nil {
		return sdk.Errorf("failed to write to '%s': %s", path, strerror(err))
	}
	if err := unix.Renameat(d.fd, tmp, d.fd, "authorized_keys"); err != nil {
		return sdk.Errorf("failed to write to '%s': %s", path, strerror(err))
	}
	committed = true
	if err := unix.Fsync(d.fd); err != nil {
		s.log.Warn("fsync of the ssh directory failed", "path", d.path, "error", err)
	}
	return nil
}

func (s *system) sshGetKeys(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Username string `json:"username"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	u, err := s.lookupUser(a.Username)
	if err != nil {
		return nil, err
	}
	d, err := s.openSSHDir(u, false)
	if err != nil {
		return nil, err
	}
	if d == nil {
		p := filepath.Join(s.rootPath(u.home), ".ssh", "authorized_keys")
		return nil, sdk.Errorf("failed to read '%s': Failed to open file “%s”: %s", p, p, strerror(unix.ENOENT))
	}
	defer d.close()
	lines, err := s.readKeys(d, false)
	if err != nil {
		return nil, sdk.Errorf("%s", err)
	}
	// Blank lines and comments are not keys. qemu-ga prepends each key to
	// its list, so they come out last line first.
	keys := []string{}
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' {
			continue
		}
		keys = append([]string{l}, keys...)
	}
	return map[string]any{"keys": keys}, nil
}

func (s *system) decodeKeys(raw []json.RawMessage) ([]string, error) {
	keys, err := decodeStringList("keys", raw)
	if err != nil {
		return nil, err
	}
	return keys, checkKeys(keys)
}

// sshAddKeys appends the keys not present yet; with reset the file holds
// the given keys only (none: an empty file).
func (s *system) sshAddKeys(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Username string            `json:"username"`
		Keys     []json.RawMessage `json:"keys"`
		Reset    *bool             `json:"reset"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	if a.Keys == nil {
		return nil, sdk.Errorf("Parameter 'keys' is missing")
	}
	keys, err := s.decodeKeys(a.Keys)
	if err != nil {
		return nil, err
	}
	u, err := s.lookupUser(a.Username)
	if err != nil {
		return nil, err
	}
	d, err := s.openSSHDir(u, true)
	if err != nil {
		return nil, err
	}
	defer d.close()
	lines := []string{}
	if a.Reset == nil || !*a.Reset {
		// A missing file is a new one. Any other failure stops here: qemu-ga
		// would start afresh and drop keys it merely could not read.
		old, err := s.readKeys(d, true)
		switch {
		case err == nil:
			lines = old
		case !errors.Is(err, unix.ENOENT):
			return nil, sdk.Errorf("%s", err)
		}
	}
	present := make(map[string]bool, len(lines)+len(keys))
	for _, l := range lines {
		present[l] = true
	}
	for _, k := range keys {
		if !present[k] {
			present[k] = true
			lines = append(lines, k)
		}
	}
	if err := s.writeKeys(d, lines); err != nil {
		return nil, err
	}
	s.log.Info("authorized keys added", "user", u.name, "keys", len(keys))
	return nil, nil
}

// sshRemoveKeys drops the lines equal to one of the keys; a missing file is
// not an error.
func (s *system) sshRemoveKeys(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Username string            `json:"username"`
		Keys     []json.RawMessage `json:"keys"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	if a.Keys == nil {
		return nil, sdk.Errorf("Parameter 'keys' is missing")
	}
	keys, err := s.decodeKeys(a.Keys)
	if err != nil {
		return nil, err
	}
	u, err := s.lookupUser(a.Username)
	if err != nil {
		return nil, err
	}
	d, err := s.openSSHDir(u, false)
	if err != nil || d == nil {
		return nil, err
	}
	defer d.close()
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, "authorized_keys", &st, 0); errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	lines, err := s.readKeys(d, true)
	if err != nil {
		return nil, sdk.Errorf("%s", err)
	}
	drop := make(map[string]bool, len(keys))
	for _, k := range keys {
		drop[k] = true
	}
	kept := lines[:0]
	for _, l := range lines {
		if !drop[l] {
			kept = append(kept, l)
		}
	}
	if err := s.writeKeys(d, kept); err != nil {
		return nil, err
	}
	s.log.Info("authorized keys removed", "user", u.name, "keys", len(keys))
	return nil, nil
}
