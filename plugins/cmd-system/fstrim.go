package main

import (
	"context"
	"fmt"
	"unsafe"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

func (s *system) fstrimCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        "guest-fstrim",
		Description: "Discard unused blocks of every local filesystem (FITRIM); reports each path",
		ArgsSchema:  `{"type":"object","properties":{"minimum":{"type":"integer"}},"additionalProperties":false}`,
		Handler:     s.fstrim,
	}}
}

// ioctlFITRIM is _IOWR('X', 121, struct fstrim_range).
const ioctlFITRIM = 0xc0185879

// fstrimRange is struct fstrim_range of <linux/fs.h>; the kernel writes back
// the bytes trimmed into length and the effective minimum into minLen.
type fstrimRange struct {
	start, length, minLen uint64
}

type trimResult struct {
	Path    string  `json:"path"`
	Trimmed *uint64 `json:"trimmed,omitempty"`
	Minimum *uint64 `json:"minimum,omitempty"`
	Error   *string `json:"error,omitempty"`
}

// fstrim trims every mount of the freeze list; a mount that cannot be
// trimmed gets an error string of its own, the command itself succeeds.
// Results come in reverse mount order, as qemu-ga lists them.
func (s *system) fstrim(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Minimum *int64 `json:"minimum"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	mounts, err := s.mounts(false)
	if err != nil {
		return nil, err
	}
	s.log.Info("guest-fstrim called", "mounts", len(mounts))
	paths := make([]trimResult, 0, len(mounts))
	for i := len(mounts) - 1; i >= 0; i-- {
		paths = append(paths, trimOne(mounts[i].dir, a.Minimum))
	}
	return map[string]any{"paths": paths}, nil
}

func trimOne(dir string, minimum *int64) trimResult {
	res := trimResult{Path: dir}
	fail := func(format string, args ...any) trimResult {
		msg := fmt.Sprintf(format, args...)
		res.Error = &msg
		return res
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("failed to open: %s", strerror(err))
	}
	defer unix.Close(fd)
	r := fstrimRange{length: ^uint64(0)}
	if minimum != nil {
		r.minLen = uint64(*minimum)
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlFITRIM, uintptr(unsafe.Pointer(&r)))
	switch errno {
	case 0:
	case unix.ENOTTY, unix.EOPNOTSUPP:
		return fail("trim not supported")
	default:
		return fail("failed to trim: %s", strerror(errno))
	}
	res.Minimum, res.Trimmed = &r.minLen, &r.length
	return res
}
