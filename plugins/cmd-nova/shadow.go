package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// lockWait bounds the wait for shadow-utils' lock, as lckpwdf(3) does (15 s).
const lockWait = 15 * time.Second

// setShadowPassword sets user's password in <root>/etc/shadow: hashed with
// the scheme the user's current hash uses ($6$ or $5$, keeping an explicit
// rounds count) and a fresh salt; any other scheme (yescrypt, MD5-crypt,
// DES, a locked or empty password) becomes SHA-512-crypt. The file is
// rewritten atomically (temporary file, fsync, rename) with its mode and
// owner, under the lock that passwd(1) and chpasswd(8) take.
func setShadowPassword(ctx context.Context, o *options, user string, pw []byte, now time.Time, log hclog.Logger) error {
	path := o.under("/etc/shadow")
	unlock, err := lockPasswd(ctx, o.under("/etc/.pwd.lock"))
	if err != nil {
		return err
	}
	defer unlock()

	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("password: %w", err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	found := false
	for i, line := range lines {
		body := strings.TrimRight(line, "\n")
		fields := strings.Split(body, ":")
		if len(fields) < 2 || fields[0] != user {
			continue
		}
		hashed, scheme, err := hashLike(fields[1], pw)
		if err != nil {
			return err
		}
		log.Debug("new password hash", "user", user, "scheme", scheme, "previous", schemeOf(fields[1]))
		fields[1] = hashed
		if len(fields) > 2 {
			// Days since the epoch, as passwd(1) records the change.
			fields[2] = strconv.FormatInt(now.Unix()/86400, 10)
		}
		lines[i] = strings.Join(fields, ":") + line[len(body):]
		found = true
		break
	}
	if !found {
		return sdk.Errorf("password: user %s not found in %s", quote(user), path)
	}
	return replaceFile(path, []byte(strings.Join(lines, "")), nil)
}

// hashLike hashes pw with the scheme of the existing hash old.
func hashLike(old string, pw []byte) (hashed, scheme string, err error) {
	// "!" or "*" before a hash locks it; setting a password unlocks.
	old = strings.TrimLeft(old, "!*")
	setting := ""
	switch {
	case strings.HasPrefix(old, "$6$"), strings.HasPrefix(old, "$5$"):
		setting = old[:3]
		if r, ok := strings.CutPrefix(old[3:], "rounds="); ok {
			if num, _, ok := strings.Cut(r, "$"); ok {
				setting += "rounds=" + num + "$"
			}
		}
	default:
		setting = "$6$"
	}
	salt, err := newSalt(shaCryptSaltMax)
	if err != nil {
		return "", "", err
	}
	hashed, err = shaCrypt(pw, setting+salt)
	if err != nil {
		return "", "", err
	}
	return hashed, setting[:3], nil
}

// schemeOf names a hash's scheme for logs (never the hash itself).
func schemeOf(h string) string {
	h = strings.TrimLeft(h, "!*")
	if strings.HasPrefix(h, "$") {
		if i := strings.IndexByte(h[1:], '$'); i >= 0 {
			return h[:i+2]
		}
	}
	if h == "" {
		return "none"
	}
	return "des-or-locked"
}

// lockPasswd takes shadow-utils' lock file as lckpwdf(3) does: an fcntl
// write lock on /etc/.pwd.lock.
func lockPasswd(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("password: lock: %w", err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	deadline := time.Now().Add(lockWait)
	for {
		err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			f.Close()
			return nil, fmt.Errorf("password: lock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("password: %s is locked by another program", path)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("password: lock: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// fileMeta is the mode and owner a new file gets.
type fileMeta struct {
	mode     os.FileMode
	uid, gid int
}

// replaceFile atomically replaces path with data: a temporary file in the
// same directory, written, synced and renamed over it, keeping path's mode
// and owner (or meta's when path does not exist; nil means 0644 root). The
// directory is created when missing.
func replaceFile(path string, data []byte, meta *fileMeta) error {
	dir := filepath.Dir(path)
	m := fileMeta{mode: 0o644}
	if meta != nil {
		m = *meta
	}
	if fi, err := os.Stat(path); err == nil {
		m.mode = fi.Mode().Perm() | fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			m.uid, m.gid = int(st.Uid), int(st.Gid)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", path, err)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".guest-agent-*")
	if err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// Mode and owner before the data, so a secret is never readable by
	// others, not even for a moment.
	if err := tmp.Chmod(m.mode); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if err := tmp.Chown(m.uid, m.gid); err != nil && !(errors.Is(err, os.ErrPermission) && os.Geteuid() != 0) {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	ok = true
	syncDir(dir)
	return nil
}

// syncDir makes a rename durable; failures only cost durability.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// sameBytes reports whether path already holds data.
func sameBytes(path string, data []byte) bool {
	old, err := os.ReadFile(path)
	return err == nil && bytes.Equal(old, data)
}
