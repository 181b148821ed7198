// Command guest-agent-cmd-files serves qemu-ga's file commands:
// guest-file-open, guest-file-close, guest-file-read, guest-file-write,
// guest-file-seek and guest-file-flush, with qemu-ga's arguments, results,
// handle numbering and error texts (qga/commands-posix.c, qga/commands.c).
//
// Options (the plugin's block of the agent configuration):
//
//	max_handles    how many files may be open at once through guest-file-open
//	               (default 64; 0 means no limit, as qemu-ga). An open beyond
//	               the limit fails without touching the file system.
//	allowed_paths  absolute paths of directories; when set, guest-file-open
//	               refuses any path that, after resolving symbolic links and
//	               "..", is not one of them or beneath one of them (default:
//	               unset, no confinement). Each is opened once, its path checked
//	               (see confine.go), and files are opened beneath that descriptor.
//	allow_unsafe_roots  accept allowed_paths whose path a user other than root
//	               could change (default false: such a root is refused).
//
// Restart: open handles live in this process. When the plugin exits or is
// restarted (crash, upgrade, idle exit) its files are closed by the kernel with
// the process and the handles are gone; a later guest-file-read/write/seek/
// flush/close on such a stale handle fails with qemu-ga's "handle '%d' has not
// been found". The handle counter is kept in the plugin's state directory
// (qga.state, the same key file qemu-ga writes), so numbers continue where
// they stopped and a handle number is never reused after a restart: a stale
// handle can never reach a file opened later.
package main

import (
	"fmt"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

var version = "dev" // set by the build: -X main.version=...

// defaultMaxHandles bounds the files a host can keep open through the agent.
// qemu-ga has no limit (it stops at the process's RLIMIT_NOFILE); callers
// such as libvirt and Proxmox hold one handle at a time.
const defaultMaxHandles = 64

func main() {
	sdk.ServeCommands(newFilesPlugin().commandPlugin())
}

// options are the plugin's configuration options.
type options struct {
	MaxHandles       *int     `json:"max_handles"`
	AllowedPaths     []string `json:"allowed_paths"`
	AllowUnsafeRoots bool     `json:"allow_unsafe_roots"`
}

// filesPlugin holds the state of one plugin instance: the open handles, the
// persistent handle counter, and the confinement of paths.
type filesPlugin struct {
	handles *handleTable
	confine *confinement // nil: any path may be opened
	p       *sdk.CommandPlugin
}

func newFilesPlugin() *filesPlugin {
	f := &filesPlugin{handles: newHandleTable(defaultMaxHandles)}
	f.p = &sdk.CommandPlugin{
		Name:      "cmd-files",
		Version:   version,
		Configure: f.configure,
		Commands:  f.commands(),
		Busy:      f.handles.busy,
	}
	return f
}

func (f *filesPlugin) commandPlugin() *sdk.CommandPlugin { return f.p }

func (f *filesPlugin) configure(cfg sdk.Config) error {
	if cfg.Logger != nil {
		f.p.Logger = cfg.Logger
	}
	var o options
	if err := cfg.DecodeOptions(&o); err != nil {
		return err
	}
	if o.MaxHandles != nil {
		if *o.MaxHandles < 0 {
			return fmt.Errorf("max_handles must be 0 (no limit) or positive, not %d", *o.MaxHandles)
		}
		f.handles.max = *o.MaxHandles
	}
	if len(o.AllowedPaths) > 0 {
		c, err := newConfinement(o.AllowedPaths, o.AllowUnsafeRoots, f.p.Logger)
		if err != nil {
			return err
		}
		f.confine.close()
		f.confine = c
	}
	if cfg.StateDir != "" {
		if err := f.handles.loadCounter(cfg.StateDir); err != nil {
			return err
		}
	}
	if f.p.Logger != nil {
		f.p.Logger.Debug("configured", "max_handles", f.handles.max,
			"allowed_paths", strings.Join(o.AllowedPaths, ","), "next_handle", f.handles.peekNext())
	}
	return nil
}

// closeAll closes every open handle and the allowed roots, as the end of
// the process would.
func (f *filesPlugin) closeAll() {
	f.handles.closeAll()
	f.confine.close()
}
