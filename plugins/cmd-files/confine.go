package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// confinement restricts guest-file-open to configured path prefixes.
//
// A path is resolved the way the kernel will resolve it (symbolic links and
// ".." included) and must land on a prefix or beneath one. The check alone
// would race with a rename or a symlink swapped in afterwards, so the file is
// then opened with openat2(RESOLVE_BENEATH) relative to the prefix: the kernel
// itself refuses any resolution that leaves it.
type confinement struct {
	roots []string // absolute, cleaned, symlinks resolved when they exist
}

var errOutside = errors.New("outside the allowed paths")

func newConfinement(prefixes []string) (*confinement, error) {
	c := &confinement{}
	for _, p := range prefixes {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("allowed_paths: %q is not an absolute path", p)
		}
		root := filepath.Clean(p)
		if r, err := filepath.EvalSymlinks(root); err == nil {
			root = r
		}
		c.roots = append(c.roots, root)
	}
	return c, nil
}

func (c *confinement) String() string { return strings.Join(c.roots, ", ") }

// resolve returns the allowed root that path falls under and path relative
// to it, or errOutside. A path that does not exist yet (a file to create) is
// resolved through its parent directory.
func (c *confinement) resolve(path string) (root, rel string, err error) {
	abs := path
	if !filepath.IsAbs(abs) {
		wd, err := os.Getwd()
		if err != nil {
			return "", "", fmt.Errorf("current directory: %w", err)
		}
		abs = wd + "/" + abs
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return "", "", err
		}
		// Split without cleaning: the kernel resolves "dir/.." after
		// following dir, and so does EvalSymlinks on the parent.
		i := strings.LastIndexByte(abs, '/')
		dir, base := abs[:i], abs[i+1:]
		if dir == "" {
			dir = "/"
		}
		if base == "" || base == "." || base == ".." {
			return "", "", unix.ENOENT
		}
		rdir, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return "", "", err
		}
		real = filepath.Join(rdir, base)
	}
	for _, r := range c.roots {
		switch {
		case real == r:
			return r, ".", nil
		case r == "/":
			return r, strings.TrimPrefix(real, "/"), nil
		case strings.HasPrefix(real, r+"/"):
			return r, real[len(r)+1:], nil
		}
	}
	return "", "", errOutside
}

// opener opens one resolved path, inside a root or not.
type opener struct {
	path string // as given by the host, for plain opens
	root string // "" when not confined
	rel  string
}

func (o *opener) open(flags int, mode uint32) (int, error) {
	if o.root == "" {
		return unix.Open(o.path, flags, mode)
	}
	dfd, err := unix.Open(o.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat2(dfd, o.rel, &unix.OpenHow{
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
// the resolved path without following a final symlink, then check where the
// descriptor really points.
func (o *opener) openChecked(flags int, mode uint32) (int, error) {
	full := filepath.Join(o.root, o.rel)
	fd, err := unix.Open(full, flags|unix.O_NOFOLLOW, mode)
	if err != nil {
		return -1, err
	}
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err == nil && (target == o.root || o.root == "/" || strings.HasPrefix(target, o.root+"/")) {
		return fd, nil
	}
	unix.Close(fd)
	if err != nil {
		return -1, err
	}
	return -1, errOutside
}

func (o *opener) unlink() {
	if o.root == "" {
		_ = unix.Unlink(o.path)
		return
	}
	_ = os.Remove(filepath.Join(o.root, o.rel))
}
