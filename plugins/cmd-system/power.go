package main

import (
	"context"
	"errors"
	"os"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

func (s *system) powerCommands() []sdk.Command {
	return []sdk.Command{
		{
			Name:              "guest-shutdown",
			Description:       "Initiate guest-activated shutdown: halt, powerdown (default) or reboot; no response on success",
			ArgsSchema:        `{"type":"object","properties":{"mode":{"type":"string","enum":["halt","powerdown","reboot"]}},"additionalProperties":false}`,
			NoSuccessResponse: true,
			Handler:           s.shutdown,
		},
		{
			Name:              "guest-suspend-disk",
			Description:       "Suspend the guest to disk (systemd, pm-utils, then /sys/power/state); no response on success",
			ArgsSchema:        `{"type":"object","additionalProperties":false}`,
			NoSuccessResponse: true,
			Handler:           s.suspendHandler(suspendDisk),
		},
		{
			Name:              "guest-suspend-ram",
			Description:       "Suspend the guest to RAM (systemd, pm-utils, then /sys/power/state); no response on success",
			ArgsSchema:        `{"type":"object","additionalProperties":false}`,
			NoSuccessResponse: true,
			Handler:           s.suspendHandler(suspendRAM),
		},
		{
			Name:              "guest-suspend-hybrid",
			Description:       "Save the guest to disk and suspend it to RAM (systemd or pm-utils); no response on success",
			ArgsSchema:        `{"type":"object","additionalProperties":false}`,
			NoSuccessResponse: true,
			Handler:           s.suspendHandler(suspendHybrid),
		},
	}
}

// shutdown runs the mode's own program (poweroff, halt, reboot) when it is
// installed and shutdown(8) otherwise, and waits for it: both only ask init
// to act and return at once. Success sends no reply, as qemu-ga.
func (s *system) shutdown(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Mode *string `json:"mode"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	mode := "powerdown"
	if a.Mode != nil {
		mode = *a.Mode
	}
	var flag, own string
	switch mode {
	case "powerdown":
		flag, own = "-P", s.opts.PoweroffPath
	case "halt":
		flag, own = "-H", s.opts.HaltPath
	case "reboot":
		flag, own = "-r", s.opts.RebootPath
	default:
		// The missing parenthesis is qemu-ga's.
		return nil, sdk.Errorf("mode is invalid (valid values are: halt|powerdown|reboot")
	}
	s.log.Info("guest-shutdown called", "mode", mode)
	argv := []string{s.opts.ShutdownPath, "-h", flag, "+0", "hypervisor initiated shutdown"}
	if own != "" && unix.Access(own, unix.X_OK) == nil {
		argv = []string{own}
	}
	if err := s.runCommand(ctx, argv, nil, "shutdown"); err != nil {
		return nil, err
	}
	return &sdk.Reply{NoResponse: true}, nil
}

type suspendMode int

const (
	suspendDisk suspendMode = iota
	suspendRAM
	suspendHybrid
)

// The helpers and /sys/power/state words of each mode, from qemu-ga.
var (
	systemdUnits   = [...]string{"systemd-hibernate", "systemd-suspend", "systemd-hybrid-sleep"}
	systemctlVerbs = [...]string{"hibernate", "suspend", "hybrid-sleep"}
	pmSupportArgs  = [...]string{"--hibernate", "--suspend", "--suspend-hybrid"}
	pmPrograms     = [...]string{"pm-hibernate", "pm-suspend", "pm-suspend-hybrid"}
	sysStateWords  = [...]string{"disk", "mem", ""}
)

func (s *system) suspendHandler(mode suspendMode) func(context.Context, *sdk.Call) (any, error) {
	return func(ctx context.Context, call *sdk.Call) (any, error) {
		var a struct{}
		if err := call.Decode(&a); err != nil {
			return nil, err
		}
		if err := s.suspend(ctx, mode); err != nil {
			return nil, err
		}
		return &sdk.Reply{NoResponse: true}, nil
	}
}

// suspend tries systemd, then pm-utils, then a write to /sys/power/state,
// exactly in qemu-ga's order: a method is used only when it says it supports
// the mode, and the last error of a supported method is the one reported.
func (s *system) suspend(ctx context.Context, mode suspendMode) error {
	supported := false
	if st, _ := s.runProcessChild(ctx, "systemctl", "status", systemdUnits[mode]); st > 0 && st < 4 {
		// systemctl status speaks LSB: 1-3 mean the unit exists (3 is "not
		// running"); 4 is an unknown unit.
		supported = true
		if err := s.systemdSuspend(ctx, mode); err == nil {
			return nil
		}
	}
	if ok, _ := s.pmUtilsSupports(ctx, mode); ok {
		supported = true
		if err := s.pmUtilsSuspend(ctx, mode); err == nil {
			return nil
		}
	}
	var lastErr error
	if s.sysStateSupports(mode) {
		supported = true
		lastErr = s.sysStateSuspend(mode)
	}
	if !supported {
		return sdk.Errorf("the requested suspend mode is not supported by the guest")
	}
	return lastErr
}

// runProcessChild is qemu-ga's run_process_child(): the exit status, or -1
// when the program is not installed (no error) or could not run (error).
func (s *system) runProcessChild(ctx context.Context, argv ...string) (int, error) {
	res, err := s.execHelper(ctx, argv, nil)
	if err != nil {
		var se *startErr
		if errors.As(err, &se) && errors.Is(se.err, unix.ENOENT) {
			return -1, nil
		}
		return -1, sdk.Errorf("failed to create child process, error '%v'", err)
	}
	return res.exitCode, nil
}

func (s *system) systemdSuspend(ctx context.Context, mode suspendMode) error {
	st, err := s.runProcessChild(ctx, "systemctl", systemctlVerbs[mode])
	return helperFailure("systemctl "+systemctlVerbs[mode], st, err)
}

func (s *system) pmUtilsSupports(ctx context.Context, mode suspendMode) (bool, error) {
	st, err := s.runProcessChild(ctx, "pm-is-supported", pmSupportArgs[mode])
	if st == -1 && err == nil {
		return false, nil // pm-utils is not installed: no error, as qemu-ga
	}
	err = helperFailure("pm-is-supported", st, err)
	return err == nil, err
}

func (s *system) pmUtilsSuspend(ctx context.Context, mode suspendMode) error {
	st, err := s.runProcessChild(ctx, pmPrograms[mode])
	return helperFailure(pmPrograms[mode], st, err)
}

// helperFailure turns what runProcessChild returned for program into
// qemu-ga's error: nil for exit status 0, the failure to run it, "not
// found", or the unexpected exit status.
func helperFailure(program string, status int, err error) error {
	switch {
	case status == 0:
		return nil
	case err != nil:
		return err
	case status == -1:
		return sdk.Errorf("the helper program '%s' was not found", program)
	default:
		return sdk.Errorf("the helper program '%s' returned an unexpected exit status code (%d)", program, status)
	}
}

// sysStateSupports reads the kernel's list of sleep states; hybrid sleep has
// no word of its own there.
func (s *system) sysStateSupports(mode suspendMode) bool {
	word := sysStateWords[mode]
	if word == "" {
		return false
	}
	f, err := os.Open(s.sysPath("power/state"))
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 31) // qemu-ga reads at most 31 bytes
	n, err := f.Read(buf)
	if n <= 0 || (err != nil && n == 0) {
		return false
	}
	return strings.Contains(string(buf[:n]), word)
}

func (s *system) sysStateSuspend(mode suspendMode) error {
	path := s.sysPath("power/state")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(sysStateWords[mode])
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return sdk.Errorf("suspend: cannot write to '%s': %s", path, strerror(err))
	}
	return nil
}
