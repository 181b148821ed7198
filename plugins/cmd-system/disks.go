package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func (s *system) disksCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        "guest-get-disks",
		Description: "List the block devices of non-zero size and their partitions, dependencies and addresses",
		ArgsSchema:  `{"type":"object","additionalProperties":false}`,
		Handler:     s.getDisks,
	}}
}

// diskInfo is GuestDiskInfo (without smart, which only NVMe disks have).
type diskInfo struct {
	Name         string       `json:"name"`
	Partition    bool         `json:"partition"`
	Dependencies *[]string    `json:"dependencies,omitempty"`
	Address      *diskAddress `json:"address,omitempty"`
	Alias        string       `json:"alias,omitempty"`
}

// getDisks walks /sys/block like qemu-ga: every device of non-zero size,
// then its partitions, each partition depending on its disk. qemu-ga builds
// the list by prepending, so it comes out last device first.
func (s *system) getDisks(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	blockDir := s.sysPath("block")
	entries, err := readDirUnsorted(blockDir)
	if err != nil {
		return nil, sdk.Errorf("Can't open directory \"%s\": %s", blockDir, strerror(err))
	}
	var list []diskInfo
	for _, e := range entries {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		diskDir := filepath.Join(blockDir, e.Name())
		size, err := os.ReadFile(filepath.Join(diskDir, "size"))
		if err != nil || string(size) == "0\n" {
			continue
		}
		devName := devNode(diskDir)
		if devName == "" {
			s.log.Debug("no device node for disk", "syspath", diskDir)
			continue
		}
		disk := diskInfo{Name: devName}
		if alias, err := os.ReadFile(filepath.Join(diskDir, "dm", "name")); err == nil {
			disk.Alias = strings.TrimSpace(string(alias))
		}
		if real, err := filepath.EvalSymlinks(diskDir); err == nil && !isVirtualBlock(real) {
			var d fsDisks
			if err := s.forDevice(diskDir, &d, 0); err != nil {
				s.log.Debug("no address for disk", "syspath", diskDir, "error", err)
			} else if len(d.disks) > 0 {
				disk.Address = &d.disks[0]
			}
		}
		s.diskDeps(diskDir, &disk)
		list = append(list, disk)
		list = append(list, s.diskPartitions(e.Name(), diskDir, devName)...)
	}
	out := make([]diskInfo, 0, len(list))
	for i := len(list) - 1; i >= 0; i-- {
		out = append(out, list[i])
	}
	return out, nil
}

// diskDeps lists the devices under a disk (the PVs of an LV, the disk of a
// LUKS volume): present, possibly empty, whenever the slaves directory is.
func (s *system) diskDeps(diskDir string, disk *diskInfo) {
	depsDir := filepath.Join(diskDir, "slaves")
	entries, err := readDirUnsorted(depsDir)
	if err != nil {
		return
	}
	deps := []string{}
	for _, e := range entries {
		if dev := devNode(filepath.Join(depsDir, e.Name())); dev != "" {
			deps = append([]string{dev}, deps...)
		}
	}
	disk.Dependencies = &deps
}

// diskPartitions finds the partitions of a disk: sub-directories named
// <disk><number> or <disk>p<number> (nvme0n1p1, mmcblk0p1).
func (s *system) diskPartitions(diskName, diskDir, diskDev string) []diskInfo {
	entries, err := readDirUnsorted(diskDir)
	if err != nil {
		return nil
	}
	var parts []diskInfo
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		rest, ok := strings.CutPrefix(e.Name(), diskName)
		if !ok || rest == "" {
			continue
		}
		if rest[0] == 'p' {
			rest = rest[1:]
		}
		if rest == "" || rest[0] < '0' || rest[0] > '9' {
			continue
		}
		dev := devNode(filepath.Join(diskDir, e.Name()))
		if dev == "" {
			continue
		}
		parts = append(parts, diskInfo{Name: dev, Partition: true, Dependencies: &[]string{diskDev}})
	}
	return parts
}
