package main

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

// fsMount is one local filesystem as qemu-ga's build_fs_mount_list() sees it.
type fsMount struct {
	dir          string
	devtype      string
	major, minor uint32
}

// mounts lists the local filesystems in mount order: entries of
// self/mountinfo backed by a block device (major number not 0, except btrfs
// whose source is a block device). fsinfo and fstrim list every mount point,
// bind mounts and second mounts of a device included, as qemu-ga does;
// fsfreeze asks for each device once (freezing it again would only fail
// with EBUSY, which qemu-ga skips).
func (s *system) mounts(oncePerDevice bool) ([]fsMount, error) {
	data, err := os.ReadFile(s.procPath("self/mountinfo"))
	if err != nil {
		return s.mountsFromMtab()
	}
	var out []fsMount
	for _, line := range strings.Split(string(data), "\n") {
		m, ok := parseMountinfoLine(line)
		if !ok {
			continue
		}
		if m.major == 0 {
			// btrfs reports major 0; its source device tells the truth.
			if m.devtype != "btrfs" {
				continue
			}
			kind, maj, min := devMajorMinor(m.source)
			if kind != devBlock {
				continue
			}
			m.major, m.minor = maj, min
		}
		if oncePerDevice && devSeen(out, m.major, m.minor) {
			continue
		}
		out = append(out, fsMount{dir: m.dir, devtype: m.devtype, major: m.major, minor: m.minor})
	}
	return out, nil
}

type mountinfoEntry struct {
	major, minor uint32
	dir          string
	devtype      string
	source       string
}

// parseMountinfoLine reads "id parent major:minor root mountpoint opts
// [optional fields] - fstype source superopts" (proc(5)).
func parseMountinfoLine(line string) (mountinfoEntry, bool) {
	var e mountinfoEntry
	f := strings.Fields(line)
	if len(f) < 6 {
		return e, false
	}
	maj, min, ok := strings.Cut(f[2], ":")
	if !ok {
		return e, false
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return e, false
	}
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+1 >= len(f) {
		return e, false
	}
	e.major, e.minor = uint32(ma), uint32(mi)
	e.dir = decodeMountName(f[4])
	e.devtype = f[sep+1]
	if sep+2 < len(f) {
		e.source = decodeMountName(f[sep+2])
	}
	return e, true
}

// decodeMountName undoes the kernel's octal escapes (\040 for a space) and
// "\\", as qemu-ga's decode_mntname().
func decodeMountName(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		switch {
		case i+1 < len(s) && s[i+1] == '\\':
			b.WriteByte('\\')
			i++
		case i+3 < len(s) && s[i+1] >= '0' && s[i+1] <= '3' &&
			s[i+2] >= '0' && s[i+2] <= '7' && s[i+3] >= '0' && s[i+3] <= '7':
			b.WriteByte((s[i+1]-'0')*64 + (s[i+2]-'0')*8 + (s[i+3] - '0'))
			i += 3
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

type devKind int

const (
	devOther devKind = iota
	devBlock
	devDir // a bind mount's source
)

func devMajorMinor(path string) (devKind, uint32, uint32) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return devOther, 0, 0
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return devDir, 0, 0
	case unix.S_IFBLK:
		return devBlock, unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	return devOther, 0, 0
}

func devSeen(list []fsMount, major, minor uint32) bool {
	for _, m := range list {
		if m.major == major && m.minor == minor {
			return true
		}
	}
	return false
}

// mountsFromMtab is qemu-ga's fallback when mountinfo is missing: the
// mounts whose source is a path, minus network filesystems and bind mounts.
func (s *system) mountsFromMtab() ([]fsMount, error) {
	mtab := s.procPath("self/mounts")
	data, err := os.ReadFile(mtab)
	if err != nil {
		return nil, sdk.Errorf("failed to open mtab file: '%s'", mtab)
	}
	var out []fsMount
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		fsname, dir, typ := decodeMountName(f[0]), decodeMountName(f[1]), f[2]
		if !strings.HasPrefix(fsname, "/") || typ == "smbfs" || typ == "cifs" {
			continue
		}
		kind, maj, min := devMajorMinor(fsname)
		if kind == devDir || devSeen(out, maj, min) {
			continue
		}
		out = append(out, fsMount{dir: dir, devtype: typ, major: maj, minor: min})
	}
	return out, nil
}
