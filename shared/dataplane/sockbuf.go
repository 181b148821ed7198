package dataplane

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// BulkSendBuffer is the send buffer asked for on sockets that carry file
// data. With Linux's default (208 KiB) a 1 MiB frame crosses a unix socket
// in five pieces, each waiting for the reader to wake up and drain the last:
// about 1.7 ms here, more than the copy itself.
const BulkSendBuffer = 4 << 20

// GrowSendBuffer raises the socket's send buffer to BulkSendBuffer. As root
// it goes past net.core.wmem_max (SO_SNDBUFFORCE); otherwise the kernel caps
// it there. Failure only costs speed, so it is not reported.
func GrowSendBuffer(conn net.Conn) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, BulkSendBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, BulkSendBuffer)
		}
	})
}
