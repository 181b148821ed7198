package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

// fsHook is one program run with "freeze" before FIFREEZE and with "thaw"
// after FITHAW: qemu-ga's single -F hook (fsfreeze_hook) or one of the
// files of the hook directory (fsfreeze_hook_dir).
type fsHook struct {
	path   string
	single bool // qemu-ga's -F hook: its texts and time limit are qemu-ga's
}

// ignoredHook tells the names of the hook directory that are never run,
// whatever their mode: hidden files (the shell's "*" leaves them out of
// Debian's fsfreeze-hook loop) and what editors and package managers leave
// beside a file they change (Debian's is_ignored_file, with any *.dpkg-*,
// *.rpm* and *.ucf-* suffix rather than its list of them).
func ignoredHook(name string) bool {
	if name == "" || name[0] == '.' || strings.HasSuffix(name, "~") {
		return true
	}
	dot := strings.LastIndexByte(name, '.')
	if dot < 0 {
		return false
	}
	switch ext := name[dot+1:]; {
	case ext == "bak", ext == "orig", ext == "sample",
		strings.HasPrefix(ext, "dpkg-"), strings.HasPrefix(ext, "rpm"), strings.HasPrefix(ext, "ucf-"):
		return true
	}
	return false
}

// dirHooks lists the hooks of fsfreeze_hook_dir in lexical (byte) order:
// the executable regular files, symlinks followed, minus ignoredHook. A
// missing directory holds none.
func (s *system) dirHooks() ([]fsHook, error) {
	dir := s.opts.FsfreezeHookDir
	if dir == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(dir) // sorted by name
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, sdk.Errorf("fsfreeze hook directory %s: %s", dir, strerror(err))
	}
	var hooks []fsHook
	for _, e := range entries {
		name := e.Name()
		if ignoredHook(name) {
			s.log.Debug("fsfreeze hook directory: ignored name", "name", name)
			continue
		}
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			s.log.Warn("fsfreeze hook directory: skipping an entry that cannot be examined", "path", p, "error", err)
			continue
		}
		if !st.Mode().IsRegular() || unix.Access(p, unix.X_OK) != nil {
			s.log.Debug("fsfreeze hook directory: not an executable file, skipped", "path", p, "mode", st.Mode())
			continue
		}
		hooks = append(hooks, fsHook{path: p})
	}
	return hooks, nil
}

// freezeHooks is every hook in freeze order: the single hook, then the
// directory's. When the directory cannot be read the error comes with the
// hooks that are known (the single one), so that a thaw still runs it.
func (s *system) freezeHooks() ([]fsHook, error) {
	var hooks []fsHook
	if s.opts.FsfreezeHook != "" {
		hooks = append(hooks, fsHook{path: s.opts.FsfreezeHook, single: true})
	}
	dir, err := s.dirHooks()
	return append(hooks, dir...), err
}

// rollbackCtx is the context of the thaws a failed freeze owes its hooks:
// not cut short by the end of the freeze's request (a freeze may fail
// precisely because its request was cancelled or timed out, and the
// applications the hooks quiesced must still be let go), so bounded by the
// hooks' own time limits alone — when every hook has one.
func (s *system) rollbackCtx(ctx context.Context) context.Context {
	if s.opts.hookTimeout() > 0 && (s.opts.FsfreezeHook == "" || s.opts.helperTimeout() > 0) {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// runHookOnce runs one hook with arg, bounded by its time limit and ctx.
func (s *system) runHookOnce(ctx context.Context, h fsHook, arg string) error {
	limit := s.opts.hookTimeout()
	if h.single {
		s.log.Info("executing fsfreeze hook", "arg", arg)
		return s.runCommand(ctx, []string{h.path, arg}, nil, "execute fsfreeze hook")
	}
	s.log.Info("executing fsfreeze hook", "hook", h.path, "arg", arg)
	start := time.Now()
	res, err := s.execHelperLimit(ctx, []string{h.path, arg}, nil, limit)
	took := time.Since(start).Round(time.Millisecond)
	var out string
	if res != nil {
		out = strings.TrimRight(string(res.output), " \t\r\n")
	}
	var why string
	switch {
	case err != nil:
		why = err.Error()
		var se *startErr
		var tl *timeLimitError
		if errors.As(err, &tl) {
			why = tl.Error()
		} else if errors.As(err, &se) {
			why = se.Error()
		}
	case res.signaled:
		why = "terminated abnormally (killed by a signal)"
	case res.exitCode != 0:
		why = fmt.Sprintf("exit status %d", res.exitCode)
	}
	if why == "" {
		if out != "" {
			s.log.Info("fsfreeze hook finished", "hook", h.path, "arg", arg, "took", took, "output", out)
		} else {
			s.log.Info("fsfreeze hook finished", "hook", h.path, "arg", arg, "took", took)
		}
		return nil
	}
	s.log.Error("fsfreeze hook failed", "hook", h.path, "arg", arg, "took", took, "error", why, "output", out)
	if out != "" {
		return sdk.Errorf("fsfreeze hook %s failed on %s: %s: %s", h.path, arg, why, out)
	}
	return sdk.Errorf("fsfreeze hook %s failed on %s: %s", h.path, arg, why)
}

// runFreezeHooks runs each hook with "freeze" in order and stops at the
// first that fails. It returns the hooks that are owed a "thaw": all of them
// on success; on failure, those that ran before and, for a hook of the
// directory, the one that failed (it may have quiesced its application
// before failing or being killed; hooks take a "thaw" without a "freeze"
// anyway, qemu-ga sends one on every guest-fsfreeze-thaw). qemu-ga's own
// hook failing is qemu-ga's case: nothing ran, nothing is owed.
func (s *system) runFreezeHooks(ctx context.Context, hooks []fsHook) ([]fsHook, error) {
	for i, h := range hooks {
		if err := s.runHookOnce(ctx, h, "freeze"); err != nil {
			if h.single {
				return hooks[:i], err
			}
			return hooks[:i+1], err
		}
	}
	return hooks, nil
}

// runThawHooks runs the hooks with "thaw" in the reverse of their freeze
// order (what quiesced an application last lets it go first), every one of
// them whatever the others do, and reports the failures together.
func (s *system) runThawHooks(ctx context.Context, hooks []fsHook) error {
	var failed []string
	for i := len(hooks) - 1; i >= 0; i-- {
		if err := s.runHookOnce(ctx, hooks[i], "thaw"); err != nil {
			failed = append(failed, hookErrorText(err))
		}
	}
	switch len(failed) {
	case 0:
		return nil
	case 1:
		return sdk.Errorf("%s", failed[0])
	}
	for i := range failed {
		failed[i] = strings.TrimRight(failed[i], "\n")
	}
	return sdk.Errorf("%s", strings.Join(failed, "; "))
}

// hookErrorText is the reply text of an error.
func hookErrorText(err error) string {
	var e *sdk.Error
	if errors.As(err, &e) {
		return e.Desc
	}
	return err.Error()
}
