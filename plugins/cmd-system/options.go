package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

// options is the plugin's block of the agent configuration. Every path
// defaults to the one qemu-ga uses; the prefixes and executable paths exist so
// tests (and agents that see the guest's tree somewhere else) can point the
// plugin at another tree or at recording scripts.
type options struct {
	// Root is the directory the guest's own files are read from and written
	// to: /etc/os-release and /usr/lib/os-release (guest-get-osinfo),
	// /etc/localtime (guest-get-timezone, guest-set-time), /var/run/utmp
	// (guest-get-users), /etc/passwd and so the users' home directories
	// (guest-ssh-*), /run/udev/data (disk serial numbers). When it is not "/",
	// chpasswd is run with "-R Root" so passwords change in that tree too.
	// Default "/".
	Root string `json:"root"`
	// ProcRoot is where procfs is found: self/mountinfo (the mounts that
	// fsfreeze, fstrim and fsinfo walk), stat, diskstats, loadavg,
	// self/auxv. Default "/proc".
	ProcRoot string `json:"proc_root"`
	// SysRoot is where sysfs is found: devices/system/cpu (vcpus),
	// devices/system/memory (memory blocks), power/state (suspend), block and
	// dev/block (disks, fsinfo). Default "/sys".
	SysRoot string `json:"sys_root"`

	// ShutdownPath is run as "shutdown -h -P|-H|-r +0 'hypervisor initiated
	// shutdown'" when the mode's own program below is not executable.
	// Default "/sbin/shutdown".
	ShutdownPath string `json:"shutdown_path"`
	// PoweroffPath, HaltPath and RebootPath are preferred to ShutdownPath for
	// the powerdown, halt and reboot modes when executable, as qemu-ga does.
	// Defaults "/sbin/poweroff", "/sbin/halt", "/sbin/reboot".
	PoweroffPath string `json:"poweroff_path"`
	HaltPath     string `json:"halt_path"`
	RebootPath   string `json:"reboot_path"`
	// HwclockPath is run with -w after guest-set-time sets the system clock,
	// or -s to set the system clock from the RTC. Default "/sbin/hwclock".
	HwclockPath string `json:"hwclock_path"`
	// ChpasswdPath receives "user:password\n" on stdin, with -e for crypted
	// passwords. A name without a slash is looked up in HelperPath.
	// Default "chpasswd".
	ChpasswdPath string `json:"chpasswd_path"`
	// HelperPath is the colon-separated list of directories searched for the
	// helpers given by bare name: chpasswd, systemctl, pm-is-supported,
	// pm-hibernate, pm-suspend, pm-suspend-hybrid. Default: the plugin's PATH
	// (qemu-ga uses execvp, which does the same).
	HelperPath string `json:"helper_path"`
	// FsfreezeHook is qemu-ga's -F script: run with "freeze" before the
	// filesystems are frozen and with "thaw" after they are thawed. It must be
	// an executable file. Default "": no hook.
	FsfreezeHook string `json:"fsfreeze_hook"`
	// FsfreezeHookDir is a freeze.d-style directory of hooks beside
	// FsfreezeHook, as the hook Debian ships (/etc/qemu/fsfreeze-hook) runs
	// /etc/qemu/fsfreeze-hook.d/*. Before the filesystems are frozen, after
	// FsfreezeHook, each executable regular file of it (symlinks followed)
	// runs with "freeze" in lexical (byte) order; after they are thawed each
	// runs with "thaw" in the reverse order, then FsfreezeHook. Skipped as
	// Debian's script skips them: names starting with ".", editor and
	// package-manager leftovers (*~, *.bak, *.orig, *.sample, *.dpkg-*,
	// *.rpm*, *.ucf-*). A hook that fails or outlives its time limit on
	// freeze fails the freeze (the hooks already run, itself included, get
	// "thaw" in reverse); on thaw a failure is logged and reported, and every
	// other hook still runs. A missing directory holds no hooks. Default
	// "/etc/guest-agent/freeze.d"; "" disables it.
	FsfreezeHookDir string `json:"fsfreeze_hook_dir"`
	// FsfreezeHookTimeoutSeconds bounds each hook of FsfreezeHookDir, each
	// time it runs: past it the hook's whole process group is killed and the
	// hook has failed. FsfreezeHook itself stays bounded by
	// HelperTimeoutSeconds (Debian's is a script that runs a whole directory).
	// Default 60; 0 = HelperTimeoutSeconds.
	FsfreezeHookTimeoutSeconds int `json:"fsfreeze_hook_timeout_seconds"`

	// HelperTimeoutSeconds bounds each helper program (shutdown, hwclock,
	// chpasswd, systemctl, pm-utils, the fsfreeze hook; the hooks of
	// FsfreezeHookDir when FsfreezeHookTimeoutSeconds is 0): past it the helper's
	// whole session is killed and the command fails. qemu-ga waits forever;
	// the request's own deadline applies as well. Default 300; 0 = no limit.
	HelperTimeoutSeconds int `json:"helper_timeout_seconds"`
	// MaxHelperOutputBytes caps the helper output kept for error messages
	// (qemu-ga keeps all of it); the rest is read and dropped. Default 65536.
	MaxHelperOutputBytes int `json:"max_helper_output_bytes"`
	// MaxFileBytes caps the files read whole: authorized_keys, os-release,
	// utmp, /etc/passwd. A larger file is an error rather than an
	// allocation the host controls. Default 16 MiB.
	MaxFileBytes int64 `json:"max_file_bytes"`
}

// defaultFsfreezeHookDir is the agent's own freeze.d.
const defaultFsfreezeHookDir = "/etc/guest-agent/freeze.d"

func defaultOptions() options {
	return options{
		Root:                 "/",
		ProcRoot:             "/proc",
		SysRoot:              "/sys",
		ShutdownPath:         "/sbin/shutdown",
		PoweroffPath:         "/sbin/poweroff",
		HaltPath:             "/sbin/halt",
		RebootPath:           "/sbin/reboot",
		HwclockPath:          "/sbin/hwclock",
		ChpasswdPath:         "chpasswd",
		HelperPath:           os.Getenv("PATH"),
		FsfreezeHookDir:      defaultFsfreezeHookDir,
		HelperTimeoutSeconds: 300,
		MaxHelperOutputBytes: 64 << 10,
		MaxFileBytes:         16 << 20,

		FsfreezeHookTimeoutSeconds: 60,
	}
}

func (o *options) validate() error {
	for name, p := range map[string]*string{"root": &o.Root, "proc_root": &o.ProcRoot, "sys_root": &o.SysRoot} {
		if *p == "" || !filepath.IsAbs(*p) {
			return fmt.Errorf("%s must be an absolute path, got %q", name, *p)
		}
		*p = filepath.Clean(*p)
	}
	if o.HelperTimeoutSeconds < 0 {
		return fmt.Errorf("helper_timeout_seconds must not be negative")
	}
	if o.FsfreezeHookTimeoutSeconds < 0 {
		return fmt.Errorf("fsfreeze_hook_timeout_seconds must not be negative")
	}
	if o.FsfreezeHookDir != "" {
		// Not checked for existence: a missing directory holds no hooks,
		// and a package may create it later.
		if !filepath.IsAbs(o.FsfreezeHookDir) {
			return fmt.Errorf("fsfreeze_hook_dir must be an absolute path or empty, got %q", o.FsfreezeHookDir)
		}
		o.FsfreezeHookDir = filepath.Clean(o.FsfreezeHookDir)
	}
	if o.MaxHelperOutputBytes < 0 || o.MaxFileBytes <= 0 {
		return fmt.Errorf("max_helper_output_bytes must not be negative and max_file_bytes must be positive")
	}
	if o.FsfreezeHook != "" {
		if !filepath.IsAbs(o.FsfreezeHook) {
			return fmt.Errorf("fsfreeze_hook must be an absolute path, got %q", o.FsfreezeHook)
		}
		// qemu-ga checks its hook at start-up too: a freeze that fails
		// because of a typo in the configuration is found too late.
		if err := unix.Access(o.FsfreezeHook, unix.X_OK); err != nil {
			return fmt.Errorf("fsfreeze_hook %s: %w", o.FsfreezeHook, err)
		}
	}
	return nil
}

func (o *options) helperTimeout() time.Duration {
	return time.Duration(o.HelperTimeoutSeconds) * time.Second
}

// hookTimeout is the time limit of each hook of FsfreezeHookDir (0: none).
func (o *options) hookTimeout() time.Duration {
	if o.FsfreezeHookTimeoutSeconds == 0 {
		return o.helperTimeout()
	}
	return time.Duration(o.FsfreezeHookTimeoutSeconds) * time.Second
}

// configure applies the plugin's options and reloads the frozen flag a
// previous instance of this boot left.
func (s *system) configure(cfg sdk.Config) error {
	opts := defaultOptions()
	if err := cfg.DecodeOptions(&opts); err != nil {
		return err
	}
	// DecodeOptions accepts unknown members; a misspelt option silently
	// falling back to its default (say, fsfreeze_hok) is worse than an error.
	if len(bytes.TrimSpace(cfg.Options)) > 0 && string(bytes.TrimSpace(cfg.Options)) != "null" {
		dec := json.NewDecoder(bytes.NewReader(cfg.Options))
		dec.DisallowUnknownFields()
		var strict options
		if err := dec.Decode(&strict); err != nil {
			return fmt.Errorf("plugin options: %w", err)
		}
	}
	if err := opts.validate(); err != nil {
		return fmt.Errorf("plugin options: %w", err)
	}
	s.opts = opts
	s.runtimeDir = cfg.RuntimeDir
	if cfg.Logger != nil {
		s.log = cfg.Logger
	}
	if err := s.loadFrozenState(); err != nil {
		return err
	}
	return nil
}

// rootPath maps a path of the guest's tree (e.g. "/etc/os-release") under
// the configured root.
func (s *system) rootPath(p string) string { return joinRoot(s.opts.Root, p) }

// procPath and sysPath name a file relative to procfs or sysfs, e.g.
// procPath("self/mountinfo") is "/proc/self/mountinfo" by default.
func (s *system) procPath(rel string) string { return filepath.Join(s.opts.ProcRoot, rel) }
func (s *system) sysPath(rel string) string  { return filepath.Join(s.opts.SysRoot, rel) }

func joinRoot(root, p string) string {
	if root == "/" || root == "" {
		return p
	}
	return filepath.Join(root, strings.TrimPrefix(p, "/"))
}
