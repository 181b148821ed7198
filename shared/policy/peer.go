package policy

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxPeerGroups bounds the supplementary groups read for one peer
// (NGROUPS_MAX is 65536; a process with more than this many groups is
// matched on the first ones only).
const maxPeerGroups = 4096

// PeerIdentity reads who is at the other end of a connected unix socket:
// SO_PEERCRED (pid, uid, gid at connect time) and SO_PEERGROUPS (the
// supplementary groups, Linux 4.13 and later; without it only the primary
// group counts).
func PeerIdentity(conn syscall.Conn) (Identity, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return Unknown, fmt.Errorf("peer identity: %w", err)
	}
	id := Unknown
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			opErr = fmt.Errorf("peer identity: SO_PEERCRED: %w", err)
			return
		}
		id = Identity{PID: cred.Pid, UID: int32(cred.Uid), GID: int32(cred.Gid)}
		id.Groups, _ = PeerGroups(int(fd)) // older kernels: primary group only
	}); err != nil {
		return Unknown, fmt.Errorf("peer identity: %w", err)
	}
	return id, opErr
}

// PeerGroups reads SO_PEERGROUPS of a connected unix socket, which
// x/sys/unix has no helper for: the kernel fills an array of gid_t and says
// how long it had to be (ERANGE when the buffer was short). Linux 4.13 and
// later; ENOPROTOOPT before.
func PeerGroups(fd int) ([]int32, error) {
	buf := make([]uint32, 64)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == 0:
			n := int(size / 4)
			out := make([]int32, 0, n)
			for _, g := range buf[:n] {
				out = append(out, int32(g))
			}
			return out, nil
		case errors.Is(errno, unix.ERANGE) && int(size/4) > len(buf) && int(size/4) <= maxPeerGroups:
			buf = make([]uint32, size/4)
		default:
			return nil, errno
		}
	}
}
