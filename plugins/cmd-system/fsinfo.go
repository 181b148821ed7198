package main

import (
	"context"
	"fmt"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

func (s *system) fsinfoCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        "guest-get-fsinfo",
		Description: "List the mounted local filesystems: device, type, usage and the disks beneath",
		ArgsSchema:  `{"type":"object","additionalProperties":false}`,
		Handler:     s.getFSInfo,
	}}
}

// fsInfo is GuestFilesystemInfo.
type fsInfo struct {
	Name                 string        `json:"name"`
	Mountpoint           string        `json:"mountpoint"`
	Type                 string        `json:"type"`
	UsedBytes            *uint64       `json:"used-bytes,omitempty"`
	TotalBytes           *uint64       `json:"total-bytes,omitempty"`
	TotalBytesPrivileged *uint64       `json:"total-bytes-privileged,omitempty"`
	Disk                 []diskAddress `json:"disk"`
}

// getFSInfo describes the mounts of the freeze list (whose mountpoints can go
// to guest-fsfreeze-freeze-list), last mounted first as in qemu-ga.
func (s *system) getFSInfo(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	mounts, err := s.mounts(false)
	if err != nil {
		return nil, err
	}
	out := make([]fsInfo, 0, len(mounts))
	for i := len(mounts) - 1; i >= 0; i-- {
		fi, err := s.fsInfoFor(mounts[i])
		if err != nil {
			return nil, err
		}
		out = append(out, fi)
	}
	return out, nil
}

func (s *system) fsInfoFor(m fsMount) (fsInfo, error) {
	fi := fsInfo{Mountpoint: m.dir, Type: m.devtype, Disk: []diskAddress{}}
	var d fsDisks
	devpath := s.sysPath(fmt.Sprintf("dev/block/%d:%d", m.major, m.minor))
	if err := s.forDevice(devpath, &d, 0); err != nil {
		return fi, err
	}
	fi.Name = d.name
	if d.disks != nil {
		fi.Disk = d.disks
	}
	// Usage as df(1) shows it: "total" is what unprivileged users can get,
	// the root-reserved blocks are in total-bytes-privileged.
	var st unix.Statfs_t
	if err := unix.Statfs(m.dir, &st); err == nil {
		frsize := uint64(st.Frsize)
		if frsize == 0 {
			frsize = uint64(st.Bsize)
		}
		used := (st.Blocks - st.Bfree) * frsize
		total := (st.Blocks - st.Bfree + st.Bavail) * frsize
		priv := st.Blocks * frsize
		fi.UsedBytes, fi.TotalBytes, fi.TotalBytesPrivileged = &used, &total, &priv
	} else {
		s.log.Debug("statfs failed", "mountpoint", m.dir, "error", err)
	}
	return fi, nil
}
