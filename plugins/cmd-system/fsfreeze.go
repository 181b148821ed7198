package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

// frozenStateFile is qemu-ga's name for the flag file: present while the
// guest is frozen, so an agent restarted in that state reports "frozen" and
// still thaws. It lives in the runtime directory, as qemu-ga's lives in
// /var/run: a tmpfs, so recording a freeze never writes to a filesystem
// being frozen, and a reboot (which thaws everything) removes it.
const frozenStateFile = "qga.state.isfrozen"

func (s *system) fsfreezeCommands() []sdk.Command {
	return []sdk.Command{
		{
			Name:               "guest-fsfreeze-status",
			Description:        "Get the guest's fsfreeze state: thawed or frozen",
			ArgsSchema:         `{"type":"object","additionalProperties":false}`,
			AllowedWhileFrozen: true,
			Handler:            s.fsfreezeStatus,
		},
		{
			Name:        "guest-fsfreeze-freeze",
			Description: "Sync and freeze all freezable local filesystems; returns how many were frozen",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.fsfreezeFreeze,
		},
		{
			Name:        "guest-fsfreeze-freeze-list",
			Description: "Sync and freeze the given mountpoints (all when omitted); returns how many were frozen",
			ArgsSchema:  `{"type":"object","properties":{"mountpoints":{"type":"array","items":{"type":"string"}}},"additionalProperties":false}`,
			Handler:     s.fsfreezeFreeze,
		},
		{
			Name:               "guest-fsfreeze-thaw",
			Description:        "Thaw all frozen filesystems; returns how many were thawed",
			ArgsSchema:         `{"type":"object","additionalProperties":false}`,
			AllowedWhileFrozen: true,
			Thaws:              true,
			Handler:            s.fsfreezeThaw,
		},
	}
}

// FIFREEZE and FITHAW are _IOWR('X', 119, int) and _IOWR('X', 120, int) in
// the generic ioctl encoding (x86, arm, arm64, riscv, loongarch).
const (
	ioctlFIFREEZE = 0xc0045877
	ioctlFITHAW   = 0xc0045878
)

func (s *system) stateFilePath() string {
	if s.runtimeDir == "" {
		return ""
	}
	return filepath.Join(s.runtimeDir, frozenStateFile)
}

// loadFrozenState restores the frozen flag from the runtime directory, as
// qemu-ga does at start-up.
func (s *system) loadFrozenState() error {
	p := s.stateFilePath()
	if p == "" {
		return nil
	}
	_, err := os.Stat(p)
	switch {
	case err == nil:
		s.frozen.Store(true)
		s.log.Warn("a previous instance left the filesystems frozen; only guest-fsfreeze-status and guest-fsfreeze-thaw run until thawed", "state_file", p)
	case errors.Is(err, os.ErrNotExist):
		s.frozen.Store(false)
	default:
		return fmt.Errorf("frozen state file: %w", err)
	}
	return nil
}

// setFrozen records the frozen state before any FIFREEZE, so that a crash in
// the middle leaves the flag behind, not a silently frozen guest.
func (s *system) setFrozen() {
	if s.frozen.Swap(true) {
		return
	}
	if p := s.stateFilePath(); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			s.log.Warn("unable to create the frozen state file, fsfreeze may not survive a restart", "path", p, "error", err)
			return
		}
		f.Close()
	}
}

func (s *system) unsetFrozen() {
	if !s.frozen.Swap(false) {
		return
	}
	if p := s.stateFilePath(); p != "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("unable to delete the frozen state file", "path", p, "error", err)
		}
	}
}

func freezeState(frozen bool) pb.FreezeState {
	if frozen {
		return pb.FreezeState_FREEZE_STATE_FROZEN
	}
	return pb.FreezeState_FREEZE_STATE_THAWED
}

// fsfreezeStatus also hands the state to the parser: after a restart of
// this plugin or of the parser, a status call is enough to put them back in
// step.
func (s *system) fsfreezeStatus(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	frozen := s.frozen.Load()
	status := "thawed"
	if frozen {
		status = "frozen"
	}
	return &sdk.Reply{Value: status, FreezeState: freezeState(frozen)}, nil
}

// fsfreezeFreeze serves guest-fsfreeze-freeze and guest-fsfreeze-freeze-list:
// the hooks with "freeze" (qemu-ga's, then the directory's), then FIFREEZE on
// each selected mount in reverse mount order (a filesystem mounted on top of
// another is frozen first). The hooks run before anything is frozen, so
// nothing they touch can block them. Any unexpected failure thaws everything
// again and gives the hooks that ran their "thaw".
func (s *system) fsfreezeFreeze(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Mountpoints *[]json.RawMessage `json:"mountpoints"`
	}
	if call.Command == "guest-fsfreeze-freeze" {
		var none struct{}
		if err := call.Decode(&none); err != nil {
			return nil, err
		}
	} else if err := call.Decode(&a); err != nil {
		return nil, err
	}
	var selected map[string]bool
	if a.Mountpoints != nil {
		list, err := decodeStringList("mountpoints", *a.Mountpoints)
		if err != nil {
			return nil, err
		}
		selected = make(map[string]bool, len(list))
		for _, m := range list {
			selected[m] = true
		}
	}

	s.freezeMu.Lock()
	defer s.freezeMu.Unlock()
	if s.frozen.Load() {
		return nil, sdk.ErrorWithClass(sdk.ClassCommandNotFound,
			"Command %s has been disabled: the agent is in frozen state", call.Command)
	}
	s.log.Info("guest-fsfreeze called", "mountpoints", len(selected))
	hooks, err := s.freezeHooks()
	if err != nil {
		// A hook directory that cannot be read: freezing without the
		// hooks the guest relies on would make an inconsistent snapshot.
		return nil, err
	}
	if owed, err := s.runFreezeHooks(ctx, hooks); err != nil {
		if terr := s.runThawHooks(s.rollbackCtx(ctx), owed); terr != nil {
			s.log.Error("thaw hooks after a failed freeze hook", "error", terr)
		}
		return nil, err
	}
	mounts, err := s.mounts(true)
	if err != nil {
		if terr := s.runThawHooks(s.rollbackCtx(ctx), hooks); terr != nil {
			s.log.Error("thaw hooks after a failed freeze", "error", terr)
		}
		return nil, err
	}
	s.setFrozen()
	n, ferr := s.freezeMounts(mounts, selected)
	if ferr != nil {
		// qemu-ga thaws whatever got frozen and reports the freeze error.
		if _, terr := s.thawHooksLocked(s.rollbackCtx(ctx), hooks); terr != nil {
			s.log.Error("thaw after a failed freeze", "error", terr)
		}
		// The state goes with the error: the parser must not go on
		// refusing commands because the freeze failed.
		return &sdk.Reply{FreezeState: freezeState(s.frozen.Load())}, ferr
	}
	if n == 0 {
		// Nothing frozen (say, no mountpoint matched): stay thawed. qemu-ga
		// leaves its hook at that; the directory's hooks, which are this
		// agent's own contract, are let go at once rather than left
		// quiesced until a thaw nobody has a reason to send.
		s.unsetFrozen()
		var dir []fsHook
		for _, h := range hooks {
			if !h.single {
				dir = append(dir, h)
			}
		}
		if terr := s.runThawHooks(s.rollbackCtx(ctx), dir); terr != nil {
			s.log.Error("thaw hooks after a freeze of nothing", "error", terr)
		}
		return &sdk.Reply{Value: 0, FreezeState: pb.FreezeState_FREEZE_STATE_THAWED}, nil
	}
	return &sdk.Reply{Value: n, FreezeState: pb.FreezeState_FREEZE_STATE_FROZEN}, nil
}

func (s *system) freezeMounts(mounts []fsMount, selected map[string]bool) (int, error) {
	n := 0
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		if selected != nil && !selected[m.dir] {
			continue
		}
		fd, err := unix.Open(m.dir, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, sdk.Errorf("failed to open %s: %s", m.dir, strerror(err))
		}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlFIFREEZE, 0)
		unix.Close(fd)
		switch errno {
		case 0:
			n++
		case unix.EOPNOTSUPP, unix.EBUSY:
			// Not freezable, or already frozen through another mount of the
			// same filesystem: not counted, not an error.
		default:
			return -1, sdk.Errorf("failed to freeze %s: %s", m.dir, strerror(errno))
		}
	}
	return n, nil
}

func (s *system) fsfreezeThaw(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	s.freezeMu.Lock()
	defer s.freezeMu.Unlock()
	n, err := s.thawLocked(ctx)
	if err != nil {
		// A thaw hook failed, say: the filesystems may be thawed all the
		// same, and the parser must know.
		return &sdk.Reply{FreezeState: freezeState(s.frozen.Load())}, err
	}
	return &sdk.Reply{Value: n, FreezeState: pb.FreezeState_FREEZE_STATE_THAWED}, nil
}

// thawLocked issues FITHAW on every local mount until it fails (a filesystem
// frozen n times needs n thaws) and counts the mounts thawed at least once;
// then the frozen flag goes and the hooks installed now run with "thaw", the
// directory's in reverse order, then qemu-ga's, every one of them even when
// another fails. Like qemu-ga it does all this even when nothing was frozen.
func (s *system) thawLocked(ctx context.Context) (int, error) {
	return s.thawHooksLocked(ctx, nil)
}

// thawHooksLocked is thawLocked with the hooks of the freeze being undone
// (nil: those installed now).
func (s *system) thawHooksLocked(ctx context.Context, hooks []fsHook) (int, error) {
	mounts, err := s.mounts(true)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range mounts {
		fd, err := unix.Open(m.dir, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		thawed := false
		for {
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlFITHAW, 0)
			if errno != 0 {
				break
			}
			thawed = true
		}
		unix.Close(fd)
		if thawed {
			n++
		}
	}
	s.unsetFrozen()
	s.log.Info("guest-fsthaw called", "thawed", n)
	var listErr error
	if hooks == nil {
		hooks, listErr = s.freezeHooks()
	}
	herr := s.runThawHooks(ctx, hooks)
	switch {
	case listErr == nil:
		return n, herr
	case herr == nil:
		return n, listErr
	default:
		return n, sdk.Errorf("%s; %s", hookErrorText(listErr), hookErrorText(herr))
	}
}
