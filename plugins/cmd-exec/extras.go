package main

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// guest-exec's arguments beyond qemu-ga's: a time limit, a working
// directory, a user and group to run as (no shell: the credentials are set
// between fork and exec), and a stdin that stays open for
// guest-exec-write.

// maxExecTimeout bounds the time limit a host may give (a day): past it a
// host means "none", which is what leaving it out says.
const maxExecTimeout = 24 * time.Hour

type extraArgs struct {
	Timeout   *float64 `json:"timeout"`
	Cwd       *string  `json:"cwd"`
	User      *string  `json:"user"`
	Group     *string  `json:"group"`
	InputPipe *bool    `json:"input-pipe"`
}

// extras is a validated extraArgs.
type extras struct {
	timeout   time.Duration // 0: none
	cwd       string        // "": "/"
	user      *user.User    // nil: the plugin's own user
	cred      *syscall.Credential
	inputPipe bool
}

func (a extraArgs) validate() (extras, error) {
	var x extras
	if a.Timeout != nil {
		t := *a.Timeout
		if !(t > 0) || t > maxExecTimeout.Seconds() {
			return x, sdk.Errorf("Parameter 'timeout' must be a number of seconds above 0 and at most %d", int(maxExecTimeout.Seconds()))
		}
		x.timeout = time.Duration(t * float64(time.Second))
	}
	if a.Cwd != nil {
		if !filepath.IsAbs(*a.Cwd) {
			return x, sdk.Errorf("Parameter 'cwd' must be an absolute path")
		}
		st, err := os.Stat(*a.Cwd)
		if err != nil {
			return x, sdk.Errorf("guest-exec: working directory '%s': %v", *a.Cwd, unwrapPathError(err))
		}
		if !st.IsDir() {
			return x, sdk.Errorf("guest-exec: working directory '%s' is not a directory", *a.Cwd)
		}
		x.cwd = *a.Cwd
	}
	if a.User != nil || a.Group != nil {
		cred, u, err := credential(a.User, a.Group)
		if err != nil {
			return x, err
		}
		x.cred, x.user = cred, u
	}
	x.inputPipe = a.InputPipe != nil && *a.InputPipe
	return x, nil
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// credential resolves user and group (names or numeric ids) from the
// guest's /etc/passwd and /etc/group. A user alone runs with that user's
// primary group and supplementary groups; a group alone changes the group
// and keeps the plugin's user.
func credential(userArg, groupArg *string) (*syscall.Credential, *user.User, error) {
	cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), NoSetGroups: true}
	var u *user.User
	if userArg != nil {
		var err error
		u, err = lookupUser(*userArg)
		if err != nil {
			return nil, nil, err
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred.Uid, cred.Gid, cred.NoSetGroups = uint32(uid), uint32(gid), false
		ids, err := u.GroupIds()
		if err != nil {
			return nil, nil, sdk.Errorf("guest-exec: groups of user '%s': %v", *userArg, err)
		}
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil && uint32(g) != cred.Gid {
				cred.Groups = append(cred.Groups, uint32(g))
			}
		}
	}
	if groupArg != nil {
		g, err := lookupGroup(*groupArg)
		if err != nil {
			return nil, nil, err
		}
		gid, _ := strconv.ParseUint(g.Gid, 10, 32)
		cred.Gid = uint32(gid)
	}
	return cred, u, nil
}

func lookupUser(name string) (*user.User, error) {
	if name == "" {
		return nil, sdk.Errorf("Parameter 'user' must not be empty")
	}
	var u *user.User
	var err error
	if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
		u, err = user.LookupId(name)
	} else {
		u, err = user.Lookup(name)
	}
	if err != nil {
		return nil, sdk.Errorf("guest-exec: no user '%s' in the guest", name)
	}
	return u, nil
}

func lookupGroup(name string) (*user.Group, error) {
	if name == "" {
		return nil, sdk.Errorf("Parameter 'group' must not be empty")
	}
	var g *user.Group
	var err error
	if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
		g, err = user.LookupGroupId(name)
	} else {
		g, err = user.LookupGroup(name)
	}
	if err != nil {
		return nil, sdk.Errorf("guest-exec: no group '%s' in the guest", name)
	}
	return g, nil
}

// childEnv is the environment the child gets: env verbatim when the host
// gave it; otherwise the plugin's own, with HOME, USER and LOGNAME of the
// user it runs as (as su and runuser set them), so a program run as
// another user does not write into root's home.
func (r *execRequest) childEnv() []string {
	if r.env != nil || r.user == nil {
		return r.env
	}
	env := make([]string, 0, len(os.Environ())+3)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "HOME", "USER", "LOGNAME":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+r.user.HomeDir, "USER="+r.user.Username, "LOGNAME="+r.user.Username)
}

// checkUser applies allowed_users: the users and groups a guest-exec may
// ask for, when the option is set.
func (e *execer) checkUser(req *execRequest) error {
	e.mu.Lock()
	users := e.opts.AllowedUsers
	e.mu.Unlock()
	if users == nil || req.cred == nil {
		return nil
	}
	name := ""
	if req.user != nil {
		name = req.user.Username
	} else if u, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil {
		name = u.Username
	}
	for _, allowed := range *users {
		if allowed == "*" || allowed == name {
			return nil
		}
	}
	e.log.Warn("guest-exec refused by allowed_users", "path", req.path, "user", name)
	return sdk.Errorf("guest-exec of '%s' refused: user '%s' is not in the allowed_users of cmd-exec", req.path, name)
}

// timeUp kills the process group of a child whose time limit passed: the
// whole tree it started in its group, not only the child.
func (e *execer) timeUp(rec *record) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if rec.finished {
		return
	}
	rec.timedOut = true
	rec.stopFlowControl()
	if err := syscall.Kill(-int(rec.pid), syscall.SIGKILL); err != nil {
		e.log.Warn("guest-exec: time limit passed, killing the process group failed", "pid", rec.pid, "error", err)
		return
	}
	e.log.Info("guest-exec: time limit passed, process group killed", "pid", rec.pid)
}
