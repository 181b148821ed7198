package main

import (
	"context"
	"os"
	osexec "os/exec"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestVsockUnavailable checks the error of vsock-listen on a kernel without
// AF_VSOCK. This kernel has it, so the test re-runs itself in a child whose
// seccomp filter makes socket(AF_VSOCK, ...) fail with EAFNOSUPPORT, exactly
// what a kernel without the vsock module answers.
func TestVsockUnavailable(t *testing.T) {
	if os.Getenv("EXCHANGE_VIRTIO_NO_VSOCK") == "1" {
		if err := denyVsock(); err != nil {
			t.Fatalf("seccomp: %v", err)
		}
		p := newParserSide(t)
		_, err := (&Exchange{}).Open(context.Background(), channel(t, methodVsock, "1234", nil), p.out)
		if err == nil || !strings.Contains(err.Error(), "AF_VSOCK is not available in this kernel") {
			t.Fatalf("Open without AF_VSOCK: %v", err)
		}
		t.Logf("error: %v", err)
		return
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the seccomp filter here is written for x86_64")
	}
	cmd := osexec.Command(os.Args[0], "-test.run=^TestVsockUnavailable$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "EXCHANGE_VIRTIO_NO_VSOCK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "AF_VSOCK is not available") {
		t.Fatalf("child did not check the error:\n%s", out)
	}
	t.Logf("child:\n%s", out)
}

// denyVsock installs, on every thread of this process, a seccomp filter
// that fails socket(AF_VSOCK, ...) with EAFNOSUPPORT and allows all else.
func denyVsock() error {
	const (
		ldW  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
		arch = 0xc000003e // AUDIT_ARCH_X86_64
	)
	filter := []unix.SockFilter{
		{Code: ldW, K: 4},                             // seccomp_data.arch
		{Code: jeq, K: arch, Jt: 0, Jf: 5},            // other arch: allow
		{Code: ldW, K: 0},                             // seccomp_data.nr
		{Code: jeq, K: unix.SYS_SOCKET, Jt: 0, Jf: 3}, // not socket(): allow
		{Code: ldW, K: 16},                            // args[0], low half
		{Code: jeq, K: unix.AF_VSOCK, Jt: 0, Jf: 1},   // not AF_VSOCK: allow
		{Code: ret, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EAFNOSUPPORT)},
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return errno
	}
	return nil
}
