package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Confinement of guest-exec: which programs (allowed_paths) and which
// environment variables (allowed_env) a host may use.
//
// Programs. A path is compared with allowed_paths after the kernel has
// resolved it: its directory is opened (symbolic links and ".." followed as
// execve would follow them) and must be the very directory of an allowed
// path (same device and inode), and its last name must be that allowed
// path's last name. Comparing the last name rather than the file a final
// symlink leads to keeps multi-call programs honest: a link named "sh" to
// an allowed busybox is not busybox's "ls". The directory stays open from
// the check to the exec, and a binary is executed through it
// (/proc/self/fd/N/name), so a symlink swapped after the check cannot change
// which directory the name is taken from. A script ("#!") cannot be
// executed through a descriptor that closes at exec (its interpreter opens
// the path again), so it is executed by the real path of the checked
// directory, which holds no symbolic link and no "..": changing what it
// names takes write access to a directory on it, and with that one could as
// well replace the allowed program itself.
//
// Environment. glibc drops the variables of its unsecvars.h list (LD_*,
// GCONV_PATH, GETCONF_DIR, HOSTALIASES, LOCALDOMAIN, MALLOC_*, NLSPATH, ...)
// when it starts a set-user-ID program, because they make a program load or
// run code its caller chose. A confined guest-exec is that situation: a
// host that may only run some programs, as root. So with allowed_paths set
// only the names of allowed_env pass (by default PATH, LANG, LANGUAGE, LC_*,
// TZ, TERM, HOME, USER, LOGNAME), the variables below are refused unless
// allowed_env names them exactly (a pattern never admits them), and locale
// and time zone values that name files are refused (glibc refuses those for
// set-user-ID programs too).

// defaultAllowedEnv is allowed_env when allowed_paths is set and
// allowed_env is not.
var defaultAllowedEnv = []string{"PATH", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM", "HOME", "USER", "LOGNAME"}

// riskyEnvNames are refused unless allowed_env lists them by name: glibc's
// unsecvars.h, the shells' start-up and parsing variables, interpreters'
// module paths and options, and programs' hooks that run commands.
var riskyEnvNames = map[string]bool{
	// glibc unsecvars.h (the LD_* and MALLOC_* ones are prefixes below).
	"GCONV_PATH": true, "GETCONF_DIR": true, "GLIBC_TUNABLES": true, "HOSTALIASES": true,
	"LOCALDOMAIN": true, "LOCPATH": true, "NIS_PATH": true, "NLSPATH": true,
	"RESOLV_HOST_CONF": true, "RES_OPTIONS": true, "TMPDIR": true, "TZDIR": true,
	// Shells.
	"BASH_ENV": true, "ENV": true, "IFS": true, "SHELLOPTS": true, "BASHOPTS": true, "PS4": true,
	"CDPATH": true, "GLOBIGNORE": true, "PROMPT_COMMAND": true, "ZDOTDIR": true, "SHELL": true,
	// Interpreters and libraries that load modules or configuration named
	// by the environment.
	"CLASSPATH": true, "TCLLIBPATH": true, "OPENSSL_CONF": true, "OPENSSL_ENGINES": true,
	"OPENSSL_MODULES": true, "GIO_EXTRA_MODULES": true, "GTK_MODULES": true, "GTK_PATH": true,
	"QT_PLUGIN_PATH": true, "GST_PLUGIN_PATH": true, "GST_PLUGIN_SYSTEM_PATH": true, "TERMCAP": true,
	// Programs that programs start.
	"PAGER": true, "MANPAGER": true, "SYSTEMD_PAGER": true, "EDITOR": true, "VISUAL": true,
	"SYSTEMD_EDITOR": true, "LESSOPEN": true, "LESSCLOSE": true, "BROWSER": true,
	"SSH_ASKPASS": true, "SUDO_ASKPASS": true,
}

// riskyEnvPrefixes are families of such variables.
var riskyEnvPrefixes = []string{
	"LD_", "MALLOC_", "GLIBC_", "GCONV_", "DYLD_",
	"BASH_FUNC_", // functions exported by bash: they replace commands in bash scripts
	"PYTHON", "PERL", "RUBY", "GEM_", "NODE_", "LUA_", "JAVA_", "_JAVA_", "JDK_",
	"GIT_", "TERMINFO",
}

func riskyEnv(name string) bool {
	if riskyEnvNames[name] {
		return true
	}
	for _, p := range riskyEnvPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// checkEnvPattern validates one allowed_env entry: a name, or a prefix
// followed by one final '*'.
func checkEnvPattern(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("an empty name")
	case strings.ContainsRune(p, '='):
		return fmt.Errorf("%q holds '='", p)
	case strings.Contains(strings.TrimSuffix(p, "*"), "*"):
		return fmt.Errorf("%q: '*' may only end a name", p)
	}
	return nil
}

// envPolicy is a compiled allowed_env.
type envPolicy struct {
	exact    map[string]bool
	prefixes []string // of NAME* entries, without the '*'
}

func newEnvPolicy(list []string) *envPolicy {
	p := &envPolicy{exact: map[string]bool{}}
	for _, n := range list {
		if prefix, ok := strings.CutSuffix(n, "*"); ok {
			p.prefixes = append(p.prefixes, prefix)
		} else {
			p.exact[n] = true
		}
	}
	return p
}

// check returns why env may not be given to a confined child, or "".
func (p *envPolicy) check(env []string) string {
	for i, kv := range env {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return fmt.Sprintf("env[%d] '%s' is not NAME=VALUE", i, kv)
		}
		if !p.exact[name] {
			if riskyEnv(name) {
				return fmt.Sprintf("environment variable '%s' changes the code a program loads or runs; cmd-exec passes it only when allowed_env names it", name)
			}
			matched := false
			for _, prefix := range p.prefixes {
				if strings.HasPrefix(name, prefix) {
					matched = true
					break
				}
			}
			if !matched {
				return fmt.Sprintf("environment variable '%s' is not in the allowed_env of cmd-exec", name)
			}
		}
		if namesFile(name, value) {
			return fmt.Sprintf("environment variable '%s' names a file; cmd-exec refuses that value", name)
		}
	}
	return ""
}

// namesFile reports a locale or time zone value that makes glibc read a
// file of the caller's choice (refused by glibc for set-user-ID programs):
// a locale name with a '/', a TZ that is an absolute path or climbs out of
// the zone database with "../".
func namesFile(name, value string) bool {
	switch {
	case name == "LANG" || name == "LANGUAGE" || strings.HasPrefix(name, "LC_"):
		return strings.ContainsRune(value, '/')
	case name == "TZ":
		v := strings.TrimPrefix(value, ":")
		return strings.HasPrefix(v, "/") || strings.Contains(v, "../") || v == ".."
	}
	return false
}

// allowedPrograms is a compiled allowed_paths: for each last name, the
// directories it is allowed in (as configured; resolved at each check, so
// that the allow list means "the program this path leads to now").
type allowedPrograms map[string][]string

func newAllowedPrograms(paths []string) allowedPrograms {
	a := allowedPrograms{}
	for _, p := range paths {
		dir, name := splitProgram(p)
		a[name] = append(a[name], dir)
	}
	return a
}

// splitProgram splits an absolute path into its directory and last name,
// without cleaning: the kernel resolves "link/.." through link's target.
func splitProgram(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	dir, name = p[:i], p[i+1:]
	if dir == "" {
		dir = "/"
	}
	return dir, name
}

// checkedProgram is a program that passed allowed_paths, ready to be
// executed: close it once the child has started (or failed to).
type checkedProgram struct {
	dir      *os.File // O_PATH: the directory that was checked
	name     string
	realPath string // the checked directory's real path and the name, for logs
	execPath string // what execve gets
}

func (c *checkedProgram) close() {
	if c != nil && c.dir != nil {
		c.dir.Close()
	}
}

// errNotAllowed: the program is not one of allowed_paths.
type errNotAllowed struct{ why string }

func (e errNotAllowed) Error() string { return e.why }

// check resolves path (absolute, after the PATH lookup) the kernel's way
// and matches it against the allowed programs.
func (a allowedPrograms) check(path string) (*checkedProgram, error) {
	if !filepath.IsAbs(path) {
		return nil, errNotAllowed{"not an absolute path"}
	}
	dir, name := splitProgram(path)
	if name == "" || name == "." || name == ".." {
		return nil, errNotAllowed{"no file name"}
	}
	dirs := a[name]
	if len(dirs) == 0 {
		return nil, errNotAllowed{"no allowed path has this name"}
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, errNotAllowed{fmt.Sprintf("directory: %v", err)}
	}
	c := &checkedProgram{dir: os.NewFile(uintptr(dfd), dir), name: name}
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		c.close()
		return nil, err
	}
	realDir, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(dfd))
	if err != nil {
		c.close()
		return nil, fmt.Errorf("cannot tell where %s leads (is /proc mounted?): %w", dir, err)
	}
	c.realPath = filepath.Join(realDir, name)
	allowed := false
	for _, d := range dirs {
		var ast unix.Stat_t
		if unix.Stat(d, &ast) == nil && ast.Dev == st.Dev && ast.Ino == st.Ino {
			allowed = true
			break
		}
	}
	if !allowed {
		c.close()
		return nil, errNotAllowed{"resolves to " + c.realPath}
	}
	c.execPath = "/proc/self/fd/" + strconv.Itoa(dfd) + "/" + name
	if isScript(dfd, name) {
		c.execPath = c.realPath
	}
	return c, nil
}

// isScript reports a regular file that starts with "#!". Only regular
// files are opened for reading (opening a device may act on it), and the
// file is read through the descriptor of what was found.
func isScript(dfd int, name string) bool {
	fd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	rfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return false
	}
	defer unix.Close(rfd)
	var head [2]byte
	n, _ := unix.Pread(rfd, head[:], 0)
	return n == 2 && string(head[:]) == "#!"
}

// describe says what each allowed path leads to now, for the log at start.
func describeAllowed(paths []string) []string {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		dir, name := splitProgram(p)
		real, err := filepath.EvalSymlinks(dir)
		switch {
		case err != nil:
			out = append(out, fmt.Sprintf("%s (directory not found now: %v)", p, err))
		case filepath.Join(real, name) != p:
			out = append(out, fmt.Sprintf("%s (in %s)", p, real))
		default:
			out = append(out, p)
		}
	}
	return out
}
