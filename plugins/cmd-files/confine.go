package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// confinement restricts guest-file-open to configured directories (roots).
//
// Each root is opened once, when the plugin is configured (or, for a root
// that does not exist yet, when it first does), by walking its path one
// component at a time from "/" without following anything the walk has not
// looked at: every directory, every symbolic link and the root itself must
// be owned by root, and every directory holding one of them must not let
// anybody but root replace it (not writable by others, or sticky as /tmp
// is). A path that a user other than root could change — a symlink planted
// at the root's name, a directory the user owns, a parent anybody may write
// to — is refused unless allow_unsafe_roots says otherwise. The descriptor
// of the directory found is kept for the life of the plugin.
//
// A host's path is resolved the way the kernel will resolve it (symbolic
// links and ".." included) to find which root it falls under, and the file is
// then opened with openat2(RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS) relative
// to that root's descriptor: the kernel itself refuses any resolution that
// leaves the tree, and a root renamed, replaced or swapped for a symlink
// after it was opened does not change the tree served.
type confinement struct {
	allowUnsafe bool
	log         hclog.Logger

	mu    sync.Mutex
	roots []*allowedRoot
}

// allowedRoot is one allowed_paths entry.
type allowedRoot struct {
	given string // as configured
	path  string // cleaned, to match paths beneath it while it is not opened
	fd    int    // O_PATH|O_DIRECTORY of the checked directory; -1: not opened
	real  string // where the kernel found it, when opened
	// refused is why the root could not be opened (it did not exist, or
	// its path is unsafe), and err the error that goes to the host.
	refused string
	err     error
}

var errOutside = errors.New("outside the allowed paths")

// errUnsafeRoot is a root refused because a user other than root could
// change which directory its path names.
type errUnsafeRoot struct{ root, reason string }

func (e *errUnsafeRoot) Error() string {
	return fmt.Sprintf("allowed_paths: refusing %q: %s, so a user other than root could change which directory it names (allow_unsafe_roots = true accepts that)", e.root, e.reason)
}

func newConfinement(prefixes []string, allowUnsafe bool, log hclog.Logger) (*confinement, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &confinement{allowUnsafe: allowUnsafe, log: log}
	for _, p := range prefixes {
		if !filepath.IsAbs(p) {
			c.close()
			return nil, fmt.Errorf("allowed_paths: %q is not an absolute path", p)
		}
		r := &allowedRoot{given: p, path: filepath.Clean(p), fd: -1}
		c.roots = append(c.roots, r)
		// A root that cannot be opened (missing, unsafe) refuses what lies
		// beneath it, with its reason, and is tried again at each open:
		// the other roots and the other commands go on.
		_ = c.openRoot(r)
	}
	return c, nil
}

// openRoot opens r if it can and logs the outcome; the error is the root's
// refusal.
func (c *confinement) openRoot(r *allowedRoot) error {
	given := r.given
	fd, real, err := openRootDir(given, c.allowUnsafe)
	if err != nil {
		var unsafe *errUnsafeRoot
		switch {
		case errors.As(err, &unsafe):
		case errors.Is(err, unix.ENOENT):
			err = fmt.Errorf("allowed_paths: %q: %w", given, err)
		default:
			err = fmt.Errorf("allowed_paths: refusing %q: %s", given, strerror(err))
		}
		if r.refused != err.Error() {
			r.refused, r.err = err.Error(), err
			if errors.Is(err, unix.ENOENT) {
				c.log.Warn("allowed path does not exist (yet): nothing beneath it opens until it does", "root", given)
			} else {
				c.log.Error("allowed path refused: nothing beneath it opens", "root", given, "error", err)
			}
		}
		return err
	}
	r.fd, r.real, r.refused, r.err = fd, real, "", nil
	c.log.Info("allowed path", "root", given, "resolved", real, "unsafe_allowed", c.allowUnsafe)
	return nil
}

// close releases the roots' descriptors.
func (c *confinement) close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.roots {
		if r.fd >= 0 {
			unix.Close(r.fd)
			r.fd = -1
		}
	}
}

func (c *confinement) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := make([]string, len(c.roots))
	for i, r := range c.roots {
		s[i] = r.path
		if r.fd >= 0 {
			s[i] = r.real
		}
	}
	return strings.Join(s, ", ")
}

// maxSymlinks is the kernel's limit of symbolic links in one resolution.
const maxSymlinks = 40

// openRootDir walks path from "/" one component at a time, each opened
// with O_PATH|O_NOFOLLOW relative to the directory before it, checks what it
// finds, follows symbolic links itself (their targets walked the same way)
// and returns a descriptor of the directory reached and its real path.
func openRootDir(path string, allowUnsafe bool) (int, string, error) {
	cur, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", err
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(cur)
		}
	}()
	var curSt unix.Stat_t
	if err := unix.Fstat(cur, &curSt); err != nil {
		return -1, "", err
	}
	curPath := "/" // the physical path walked so far, for messages
	rest := strings.Split(path, "/")
	links := 0
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			up, err := unix.Openat(cur, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return -1, "", err
			}
			unix.Close(cur)
			cur, curPath = up, filepath.Dir(curPath)
			if err := unix.Fstat(cur, &curSt); err != nil {
				return -1, "", err
			}
			continue
		}
		nfd, err := unix.Openat(cur, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, "", err
		}
		entryPath := filepath.Join(curPath, name)
		var st unix.Stat_t
		if err := unix.Fstat(nfd, &st); err != nil {
			unix.Close(nfd)
			return -1, "", err
		}
		if !allowUnsafe {
			if reason := unsafeEntry(curPath, &curSt, entryPath, &st); reason != "" {
				unix.Close(nfd)
				return -1, "", &errUnsafeRoot{root: path, reason: reason}
			}
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			links++
			if links > maxSymlinks {
				unix.Close(nfd)
				return -1, "", unix.ELOOP
			}
			target, err := readlinkFd(nfd)
			unix.Close(nfd)
			if err != nil {
				return -1, "", err
			}
			if strings.HasPrefix(target, "/") {
				top, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				if err != nil {
					return -1, "", err
				}
				unix.Close(cur)
				cur, curPath = top, "/"
				if err := unix.Fstat(cur, &curSt); err != nil {
					return -1, "", err
				}
			}
			rest = append(strings.Split(target, "/"), rest...)
		case unix.S_IFDIR:
			unix.Close(cur)
			cur, curPath, curSt = nfd, entryPath, st
		default:
			unix.Close(nfd)
			return -1, "", unix.ENOTDIR
		}
	}
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(cur))
	if err != nil {
		real = curPath // no /proc: the path walked
	}
	ok = true
	return cur, real, nil
}

// unsafeEntry says why a user other than root could replace entry (in
// directory dir), or "".
func unsafeEntry(dirPath string, dir *unix.Stat_t, entryPath string, entry *unix.Stat_t) string {
	if entry.Uid != 0 {
		if entry.Mode&unix.S_IFMT == unix.S_IFLNK {
			return fmt.Sprintf("%q is a symbolic link owned by uid %d", entryPath, entry.Uid)
		}
		return fmt.Sprintf("%q is owned by uid %d", entryPath, entry.Uid)
	}
	if dir.Uid != 0 {
		return fmt.Sprintf("%q is owned by uid %d", dirPath, dir.Uid)
	}
	othersWrite := dir.Mode&0o002 != 0 || (dir.Mode&0o020 != 0 && dir.Gid != 0)
	if othersWrite && dir.Mode&unix.S_ISVTX == 0 {
		return fmt.Sprintf("%q is in %q, which users other than root may write to (mode %04o, group %d) and which has no sticky bit",
			entryPath, dirPath, dir.Mode&0o7777, dir.Gid)
	}
	return ""
}

// readlinkFd reads the target of a symbolic link opened with O_PATH.
func readlinkFd(fd int) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// resolve returns the allowed root that path falls under and path relative
// to it, or errOutside. A path that does not exist yet (a file to create) is
// resolved through its parent directory. Roots that could not be opened
// yet are tried again first.
func (c *confinement) resolve(path string) (root *allowedRoot, rel string, err error) {
	abs := path
	if !filepath.IsAbs(abs) {
		wd, err := os.Getwd()
		if err != nil {
			return nil, "", fmt.Errorf("current directory: %w", err)
		}
		abs = wd + "/" + abs
	}
	c.mu.Lock()
	for _, r := range c.roots {
		if r.fd >= 0 {
			continue
		}
		if c.openRoot(r) != nil && lexicallyUnder(filepath.Clean(abs), r.path) && r.err != nil {
			// Beneath a root that is refused, as the path is written: say
			// why, whatever its symbolic links lead to.
			err := r.err
			c.mu.Unlock()
			return nil, "", err
		}
	}
	c.mu.Unlock()
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return nil, "", err
		}
		// Split without cleaning: the kernel resolves "dir/.." after
		// following dir, and so does EvalSymlinks on the parent.
		i := strings.LastIndexByte(abs, '/')
		dir, base := abs[:i], abs[i+1:]
		if dir == "" {
			dir = "/"
		}
		if base == "" || base == "." || base == ".." {
			return nil, "", unix.ENOENT
		}
		rdir, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return nil, "", err
		}
		real = filepath.Join(rdir, base)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.roots {
		under := r.path
		if r.fd >= 0 {
			under = r.real
		}
		if !lexicallyUnder(real, under) {
			continue
		}
		rel := "."
		switch {
		case real == under:
		case under == "/":
			rel = strings.TrimPrefix(real, "/")
		default:
			rel = real[len(under)+1:]
		}
		if r.fd < 0 {
			if r.err != nil {
				return nil, "", r.err
			}
			return nil, "", unix.ENOENT
		}
		return r, rel, nil
	}
	return nil, "", errOutside
}

// lexicallyUnder reports whether the clean absolute path p is dir or lies
// beneath it.
func lexicallyUnder(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// opener opens one resolved path, inside a root or not.
type opener struct {
	path string       // as given by the host, for plain opens
	root *allowedRoot // nil when not confined
	rel  string
}

func (o *opener) open(flags int, mode uint32) (int, error) {
	if o.root == nil {
		return unix.Open(o.path, flags, mode)
	}
	fd, err := unix.Openat2(o.root.fd, o.rel, &unix.OpenHow{
		Flags:   uint64(flags),
		Mode:    uint64(mode),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch err {
	case unix.EXDEV: // the resolution tried to leave the root
		return -1, errOutside
	case unix.ENOSYS:
		return o.openChecked(flags, mode)
	}
	return fd, err
}

// openChecked is the fallback for kernels without openat2 (before 5.6): open
// relative to the root's descriptor without following a final symlink, then
// check where the descriptor really points.
func (o *opener) openChecked(flags int, mode uint32) (int, error) {
	fd, err := unix.Openat(o.root.fd, o.rel, flags|unix.O_NOFOLLOW, mode)
	if err != nil {
		return -1, err
	}
	root, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(o.root.fd))
	var target string
	if err == nil {
		target, err = os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	}
	if err == nil && (target == root || root == "/" || strings.HasPrefix(target, root+"/")) {
		return fd, nil
	}
	unix.Close(fd)
	if err != nil {
		return -1, err
	}
	return -1, errOutside
}

// unlink removes a file just created (its mode could not be set), through a
// descriptor of its directory opened beneath the root.
func (o *opener) unlink() {
	if o.root == nil {
		_ = unix.Unlink(o.path)
		return
	}
	dir, base := filepath.Split(o.rel)
	if dir == "" {
		dir = "."
	}
	dfd, err := unix.Openat2(o.root.fd, dir, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return
	}
	_ = unix.Unlinkat(dfd, base, 0)
	unix.Close(dfd)
}
