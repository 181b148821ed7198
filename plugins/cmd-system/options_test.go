package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func TestOptionsRefused(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "hook")
	writeFile(t, notExec, "#!/bin/sh\n", 0o644)
	for opts, want := range map[string]string{
		`{"fsfreeze_hok":"/x"}`:               "unknown field",
		`{"root":"relative"}`:                 "root must be an absolute path",
		`{"proc_root":""}`:                    "proc_root must be an absolute path",
		`{"fsfreeze_hook":"hook"}`:            "fsfreeze_hook must be an absolute path",
		`{"fsfreeze_hook":"` + notExec + `"}`: "permission denied",
		`{"fsfreeze_hook":"/no/such/hook"}`:   "no such file",
		`{"helper_timeout_seconds":-1}`:       "must not be negative",
		`{"max_file_bytes":0}`:                "max_file_bytes must be positive",
		`{"root":1}`:                          "cannot unmarshal",
	} {
		s := newSystem()
		err := s.plugin().Configure(sdk.Config{Options: []byte(opts), StateDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("options %s: error %v, want one saying %q", opts, err, want)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	s := newSystem()
	if err := s.plugin().Configure(sdk.Config{Options: []byte(`null`)}); err != nil {
		t.Fatal(err)
	}
	o := s.opts
	if o.Root != "/" || o.ProcRoot != "/proc" || o.SysRoot != "/sys" || o.ShutdownPath != "/sbin/shutdown" ||
		o.PoweroffPath != "/sbin/poweroff" || o.HwclockPath != "/sbin/hwclock" || o.ChpasswdPath != "chpasswd" ||
		o.FsfreezeHook != "" || o.HelperTimeoutSeconds != 300 {
		t.Fatalf("defaults %+v", o)
	}
	if s.rootPath("/etc/os-release") != "/etc/os-release" || s.procPath("self/mountinfo") != "/proc/self/mountinfo" ||
		s.sysPath("power/state") != "/sys/power/state" {
		t.Fatal("default paths are not the machine's")
	}
	s = newSystem()
	if err := s.plugin().Configure(sdk.Config{Options: []byte(`{"root":"/srv/guest/","sys_root":"/x/sys"}`)}); err != nil {
		t.Fatal(err)
	}
	if s.rootPath("/etc/passwd") != "/srv/guest/etc/passwd" || s.sysPath("block") != "/x/sys/block" {
		t.Fatalf("prefixed paths: %s %s", s.rootPath("/etc/passwd"), s.sysPath("block"))
	}
}

func TestUnknownCommand(t *testing.T) {
	tp := newTestPlugin(t, nil)
	tp.fails("guest-no-such-thing", "", sdk.ClassCommandNotFound, "The command guest-no-such-thing has not been found")
}
